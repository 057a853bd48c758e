"""Multi-label classification end to end: the metrics against scikit-learn, both CSV forms and
their errors, and a tiny ViT trained on collages of real digits (each image holds 2–4 of them)
that is then evaluated, asked for predictions, served and exported to transformers."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, f1_score

import vitkit
from conftest import PAPER_VIT, digits_config, logged, randomize_head, tiny_vit
from vitkit.analysis import explanation_maps, perturbation_curves
from vitkit.cli.main import main
from vitkit.data.datasets.image_datasets import DataError
from vitkit.data.decoded import decoded
from vitkit.data.images import load_image
from vitkit.data.load import load_data
from vitkit.interop.convert import convert
from vitkit.predict import predict_files
from vitkit.serve.app import ServeSettings, create_app
from vitkit.train import ConfigError, train
from vitkit.train.accuracy import score_model
from vitkit.train.multilabel import (
    MultiLabelScores,
    average_precision,
    best_threshold,
    mean_average_precision,
    micro_f1,
)
from vitkit.train.objectives import Classification


# ------------------------------------------------------------------ metrics
def scores_and_targets(seed, images=300, classes=7):
    """Noisy scores that rank positives higher, rounded so that ties occur; one class without positives."""
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(images, classes, generator=generator) < 0.3).float()
    targets[:, -1] = 0
    scores = (targets * 0.4 + torch.rand(images, classes, generator=generator)).round(decimals=1) / 1.4
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_equals_scikit_learn(seed):
    scores, targets = scores_and_targets(seed)
    ours = average_precision(scores, targets)
    assert ours[-1].isnan()  # no positive: no AP
    expected = average_precision_score(targets[:, :-1].numpy(), scores[:, :-1].numpy(), average=None)
    np.testing.assert_allclose(ours[:-1].numpy(), expected, rtol=1e-12)
    assert mean_average_precision(ours) == pytest.approx(expected.mean(), rel=1e-12)


def test_average_precision_of_known_rankings():
    targets = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert average_precision(torch.tensor([[0.9], [0.8], [0.7], [0.1]]), targets).item() == pytest.approx(
        (1 + 2 / 3) / 2
    )
    assert average_precision(torch.tensor([[0.9], [0.1], [0.7], [0.2]]), targets).item() == 1.0
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(average_precision(torch.rand(4, 2), torch.zeros(4, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_maximises_micro_f1_as_scikit_learn_counts_it(seed):
    probabilities, targets = scores_and_targets(seed)
    threshold, f1 = best_threshold(probabilities, targets)
    flat_targets = targets.flatten().numpy()
    assert f1 == pytest.approx(f1_score(flat_targets, (probabilities > threshold).flatten().numpy()), rel=1e-12)
    assert micro_f1(probabilities, targets, threshold) == pytest.approx(f1, rel=1e-12)
    # no threshold does better: try one between every pair of distinct probabilities and beyond
    values = np.unique(probabilities.numpy())
    tried = np.concatenate([[values[0] - 0.01], (values[1:] + values[:-1]) / 2, [values[-1] + 0.01]])
    best_any = max(f1_score(flat_targets, (probabilities.flatten().numpy() > t).astype(float)) for t in tried)
    assert f1 == pytest.approx(best_any, rel=1e-12)


def test_scores_as_json_and_as_a_table_name_a_class_without_positives():
    scores = MultiLabelScores(0.8, [0.9, float("nan")], 0.5, 0.25, 0.125, 10)
    document = scores.to_dict(["cat", "dog"])
    assert document["per_class_ap"] == {"cat": 0.9, "dog": None}  # JSON has no NaN
    assert json.loads(json.dumps(document, allow_nan=False)) == document
    assert scores.summary() == "mAP 80.00%  micro-F1 50.00% at threshold 0.250  loss 0.1250"
    assert scores.per_class_table(["cat", "dog"]).splitlines() == [
        f"  {'cat':>20s}  AP  90.00%",
        f"  {'dog':>20s}  AP no positive image",
    ]


# ------------------------------------------------------------------ the objective
def test_multi_label_loss_smooths_and_mixes_multi_hot_targets():
    model = randomize_head(tiny_vit(num_classes=4, in_chans=1, img_size=8, patch_size=4))
    images = torch.randn(6, 1, 8, 8)
    targets = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 0]])
    cpu = torch.device("cpu")
    smoothed = Classification(model, 4, 0.2, 0.0, 0.0, cpu, "fp32", multi_label=True)
    expected = F.binary_cross_entropy_with_logits(model(images), targets * 0.8 + 0.1)  # y(1-ε) + ε/2
    torch.testing.assert_close(smoothed.loss(model, images, targets), expected)

    mixed = Classification(model, 4, 0.0, 1.0, 0.0, cpu, "fp32", multi_label=True)
    torch.manual_seed(3)
    loss = mixed.loss(model, images, targets)
    torch.manual_seed(3)
    mixed_images, mixed_targets = mixed.mixing(images, targets.float())
    # Mixup blends each image with its neighbour in the batch, and the label sets with the same weight
    blend = (mixed_images - images.roll(1, 0)).flatten() @ (images - images.roll(1, 0)).flatten()
    weight = (blend / (images - images.roll(1, 0)).flatten().square().sum()).item()
    torch.testing.assert_close(mixed_targets, weight * targets + (1 - weight) * targets.roll(1, 0))
    assert 0 < weight < 1
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(model(mixed_images), mixed_targets))


# ------------------------------------------------------------------ CSV forms
def write_images(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")


def test_csv_with_label_sets_is_multi_label(tmp_path, caplog):
    write_images(tmp_path / "imgs", 6)
    rows = ["imgs/0.png,cat;dog", "imgs/1.png,dog", "imgs/2.png, bird ; cat", "imgs/3.png,", "imgs/4.png,cat"]
    (tmp_path / "sets.csv").write_text("path,label\n" + "\n".join(rows) + "\nimgs/missing.png,cat\n")
    with logged(caplog, "missing.png"):
        data = load_data(str(tmp_path / "sets.csv"), in_chans=1, val_fraction=0.2)
    assert data.multi_label and data.class_names == ["bird", "cat", "dog"]
    assert (len(data.train), len(data.val)) == (4, 1)
    targets = {Path(path).name: target.tolist() for path, target in data.train.samples + data.val.samples}
    assert targets == {
        "0.png": [0, 1, 1],
        "1.png": [0, 0, 1],
        "2.png": [1, 1, 0],
        "3.png": [0, 0, 0],  # an empty label: none of the classes
        "4.png": [0, 1, 0],
    }
    # without any ';' the same file is one label per image, unless multi-label is asked for
    (tmp_path / "single.csv").write_text("imgs/0.png,cat\nimgs/1.png,dog\nimgs/2.png,cat\nimgs/3.png,dog\n")
    assert not load_data(str(tmp_path / "single.csv"), in_chans=1, val_fraction=0.5).multi_label
    forced = load_data(str(tmp_path / "single.csv"), in_chans=1, val_fraction=0.5, multi_label=True)
    assert forced.multi_label and forced.train[0][1].shape == (2,)
    (tmp_path / "unlabelled.csv").write_text("imgs/0.png,\nimgs/1.png,\n")
    with pytest.raises(DataError, match=r"unlabelled\.csv has a label"):
        load_data(str(tmp_path / "unlabelled.csv"), in_chans=1, multi_label=True)


def test_csv_with_one_column_per_class(tmp_path):
    write_images(tmp_path / "imgs", 4)
    rows = ["path,dog,cat,bird", "imgs/0.png,1,1,0", "imgs/1.png,0,0,1", "imgs/2.png, 0 ,1,0", "imgs/3.png,0,0,0"]
    (tmp_path / "columns.csv").write_text("\n".join(rows) + "\n")
    data = load_data(str(tmp_path / "columns.csv"), in_chans=1, val_fraction=0.25)
    assert data.multi_label and data.class_names == ["dog", "cat", "bird"]  # the header's order
    targets = {Path(path).name: target.tolist() for path, target in data.train.samples + data.val.samples}
    assert targets == {"0.png": [1, 1, 0], "1.png": [0, 0, 1], "2.png": [0, 1, 0], "3.png": [0, 0, 0]}


def test_decoding_once_keeps_the_multi_hot_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("VITKIT_HOME", str(tmp_path / "home"))
    csv_path, _ = write_digit_collages(tmp_path / "data", 20)
    data = load_data(str(csv_path), in_chans=1, val_fraction=0.2)
    cached = decoded(data.train, 16, progress=False)
    assert cached.labels.shape == (16, 10)
    assert torch.equal(cached.labels, torch.stack([target for _, target in data.train.samples]))
    image, target = cached[3]
    assert image.shape == (1, 16, 16) and torch.equal(target, data.train.samples[3][1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,cat,dog\nimgs/0.png,1,yes\n", r"line 2: column 'dog' must be 0 or 1, got 'yes'"),
        ("path,cat,dog\nimgs/0.png,1\n", r"line 2: 2 columns where the header has 3"),
        ("path,cat,cat\nimgs/0.png,1,0\n", r"line 1: a header path,<class>,<class>,\.\.\. needs two or more distinct"),
        ("imgs/0.png,cat;dog\nimgs/1.png,cat;;dog\n", r"line 2: the labels 'cat;;dog' hold an empty one"),
        ("imgs/0.png,cat;dog\nimgs/1.png\n", r"line 2: expected 'path,label'"),
        ("imgs/0.png,cat;dog\n", r"lists 1 readable image\(s\)"),
    ],
)
def test_bad_multi_label_csv_names_the_file_and_line(tmp_path, text, message):
    write_images(tmp_path / "imgs", 2)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=f"bad.csv.*{message}"):
        load_data(str(tmp_path / "bad.csv"), in_chans=1)


# ------------------------------------------------------------------ a real multi-label task
def write_digit_collages(folder, count, seed=0):
    """``count`` 16×16 PNGs, each a 2×2 grid holding 2–4 distinct sklearn digits (the other cells
    black), and ``labels.csv`` naming the digits present (``path,"3;7"``). Returns the CSV and
    the label sets."""
    digits = load_digits()
    by_class = [np.flatnonzero(digits.target == d) for d in range(10)]
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, label_sets = [], []
    for i in range(count):
        present = rng.sample(range(10), rng.randint(2, 4))
        cells = rng.sample(range(4), len(present))
        collage = np.zeros((16, 16), np.uint8)
        for digit, cell in zip(present, cells, strict=True):
            row, col = divmod(cell, 2)
            collage[8 * row : 8 * row + 8, 8 * col : 8 * col + 8] = pixels[rng.choice(by_class[digit])]
        Image.fromarray(collage).save(folder / f"{i:04d}.png")
        rows.append(f"{i:04d}.png,{';'.join(map(str, sorted(present)))}")
        label_sets.append(set(present))
    (folder / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return folder / "labels.csv", label_sets


COLLAGE_MODEL = {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_dim": 128, **PAPER_VIT}


@pytest.fixture(scope="module")
def collage_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collages")
    csv_path, label_sets = write_digit_collages(tmp / "data", 1200)
    config = digits_config(
        tmp,
        data=str(csv_path),
        in_chans=1,
        img_size=16,
        model_args=COLLAGE_MODEL,
        flip=False,  # a mirrored digit is no digit
        epochs=12,
        val_fraction=0.2,
        precision="fp32",
        label_smoothing=0.1,
    )
    summary = train(config, progress=False)
    return Path(summary.run_dir), summary, tmp, label_sets


def test_a_tiny_vit_learns_digit_collages_far_above_chance(collage_run):
    run_dir, summary, _, label_sets = collage_run
    assert summary.ranked_by == "val_mAP" and summary.best_top1 is None
    # chance mAP is the label frequency: each digit is in (2+3+4)/3 / 10 = 30 % of the images
    frequency = sum(len(s) for s in label_sets) / (10 * len(label_sets))
    assert frequency == pytest.approx(0.3, abs=0.02)
    assert summary.final_metrics["val_mAP"] > 0.75
    assert summary.final_metrics["val_f1"] > 0.6
    document = json.loads((run_dir / "config.json").read_text())
    assert document["problem_type"] == "multi_label_classification"
    assert document["threshold"] == summary.final_metrics["val_threshold"]
    assert 0 < document["threshold"] < 1
    assert not (run_dir / "confusion.png").exists()  # no confusion matrix for label sets
    assert vitkit.load_model(run_dir).threshold == document["threshold"]


def test_eval_and_predict_report_map_and_label_sets(collage_run, capsys):
    run_dir, summary, tmp, label_sets = collage_run
    assert main(["eval", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mAP"] == pytest.approx(summary.final_metrics["val_mAP"], rel=1e-6)
    assert report["f1"] == pytest.approx(summary.final_metrics["val_f1"], rel=1e-6)
    assert report["threshold"] == summary.final_metrics["val_threshold"]
    assert report["images"] == 240 and sorted(report["per_class_ap"]) == [str(d) for d in range(10)]
    assert "top1" not in report

    files = [tmp / "data" / f"{i:04d}.png" for i in range(40)]
    assert main(["predict", str(run_dir), *map(str, files), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    threshold = report["threshold"]
    exact = 0
    for prediction, truth in zip(predictions, label_sets, strict=False):
        labels = {name for name, _ in prediction["labels"]}
        assert all(p > threshold for _, p in prediction["labels"])
        assert [p for _, p in prediction["labels"]] == sorted((p for _, p in prediction["labels"]), reverse=True)
        exact += labels == {str(d) for d in truth}
    assert exact >= 10  # a whole set right, for a good share of 40 (chance: about none)
    assert main(["predict", str(run_dir), str(files[0])]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}: ")


def test_serve_answers_with_the_label_set(collage_run):
    run_dir, _, tmp, _ = collage_run
    loaded = vitkit.load_model(run_dir)
    expected = predict_files(loaded, [tmp / "data" / "0000.png"])[0]
    with TestClient(create_app(loaded, ServeSettings(model_name="collages")), base_url="http://localhost") as client:
        data = (tmp / "data" / "0000.png").read_bytes()
        answer = client.post("/v1/predict", content=data, headers={"content-type": "image/png"}).json()
        described = client.get("/v1/model").json()
    assert described["multi_label"] and described["threshold"] == loaded.threshold
    assert [p["label"] for p in answer["predictions"]] == [name for name, _ in expected.labels]
    for served, (_, probability) in zip(answer["predictions"], expected.labels, strict=True):
        assert served["probability"] == pytest.approx(probability, abs=1e-5)


def test_hf_export_keeps_the_problem_type(collage_run, tmp_path):
    from transformers import ViTForImageClassification

    run_dir, _, tmp, _ = collage_run
    convert(run_dir, tmp_path / "hf", to="hf")
    hf_model = ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf_model.config.problem_type == "multi_label_classification"
    loaded = vitkit.load_model(run_dir)
    image = loaded.preprocess(Image.open(tmp / "data" / "0001.png")).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(pixel_values=image).logits, loaded.model(image), atol=1e-4, rtol=1e-4)
    back = vitkit.load_model(tmp_path / "hf")
    assert back.multi_label and back.threshold == loaded.threshold and back.class_names == loaded.class_names
    convert(tmp_path / "hf", tmp_path / "again", to="vitkit")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["threshold"] == loaded.threshold


def test_multi_label_settings_that_cannot_work_are_refused(collage_run, tmp_path):
    _, _, tmp, _ = collage_run
    csv_path = tmp / "data" / "labels.csv"
    with pytest.raises(ConfigError, match="--train-images draws images class by class"):
        train(digits_config(tmp_path, data=str(csv_path), in_chans=1, img_size=16, train_images=100), progress=False)
    with pytest.raises(ConfigError, match="--multi-label reads the labels of a CSV"):
        train(digits_config(tmp_path, multi_label=True), progress=False)
    one_class = vitkit.save_model(
        tmp_path / "one-class", vitkit.create_model("Ti/16", num_classes=10, img_size=16, patch_size=4, in_chans=1)
    )
    with pytest.raises(ValueError, match="holds several labels per image, but the model predicts one class"):
        score_model(vitkit.load_model(one_class), str(csv_path))


def test_a_chosen_label_is_explained_and_its_faithfulness_follows_the_sigmoid(collage_run, capsys):
    run_dir, _, tmp, _ = collage_run
    files = [str(tmp / "data" / f"{i:04d}.png") for i in range(3)]
    out = tmp / "inspect"
    assert main(["inspect", str(run_dir), *files, "--out", str(out), "--class", "3"]) == 0
    assert set(json.loads((out / "faithfulness.json").read_text())) == {"rollout", "relevance", "gradcam", "random"}
    loaded = vitkit.load_model(run_dir)
    images = torch.stack([loaded.preprocess(load_image(path, 1)) for path in files])
    maps = explanation_maps(loaded.model, images, "relevance", target=3)
    deletion, _ = perturbation_curves(loaded.model, images, maps, torch.full((3,), 3), multi_label=True)
    with torch.no_grad():
        torch.testing.assert_close(deletion[:, 0], loaded.model(images).sigmoid()[:, 3])
    with TestClient(create_app(loaded, ServeSettings(model_name="collages")), base_url="http://localhost") as client:
        data = (tmp / "data" / "0000.png").read_bytes()
        url = "/v1/predict?explain=gradcam&explain_class=3"
        answer = client.post(url, content=data, headers={"content-type": "image/png"}).json()
    assert answer["explanation"]["class"] == {"label": "3", "index": 3}
