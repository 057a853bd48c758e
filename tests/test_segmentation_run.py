"""Segmentation through the commands a user runs: train on a folder of images and masks (or a
CSV), load the run folder, predict masks and overlays, and the settings that do not apply."""

import base64
import http.client
import io
import json
import shutil

import numpy as np
import pytest
import torch
from loopback import free_port
from PIL import Image
from safetensors.torch import load_file
from test_serve import _start_serving, served_page

import vitkit
from conftest import run_until_checkpoint
from vitkit.cli.main import main
from vitkit.data.datasets.image_datasets import DataError
from vitkit.data.load import detect_task, load_data
from vitkit.data.masks import read_classes, read_mask
from vitkit.interop.convert import convert
from vitkit.models.segmenter import Segmenter
from vitkit.segment import segment_image
from vitkit.train import ConfigError, resolve_config, resume_run, train
from vitkit.train.segmentation import segmentation_loss

COLOURS = {"background": [0, 0, 0], "red": [200, 30, 30], "blue": [30, 30, 200]}
TINY = ["patch_size=4", "embed_dim=32", "depth=2", "num_heads=2", "mlp_dim=64"]


def _scene(draw: np.random.Generator, size: tuple[int, int] = (24, 24)) -> tuple[np.ndarray, np.ndarray]:
    """A gray image with a red and/or a blue rectangle, and its mask (0 gray, 1 red, 2 blue)."""
    height, width = size
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    for index in draw.permutation([1, 2])[: draw.integers(1, 3)]:
        top, left = draw.integers(0, height - 8), draw.integers(0, width - 8)
        rows, cols = slice(top, top + draw.integers(6, 9)), slice(left, left + draw.integers(6, 9))
        image[rows, cols] = list(COLOURS.values())[index]
        mask[rows, cols] = index
    return image, mask


def write_set(root, count=48, size=(24, 24), seed=0):
    """``root/images`` (PNG) and ``root/masks`` (palette PNGs of class indices), and classes.json."""
    draw = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(count):
        image, mask = _scene(draw, size)
        Image.fromarray(image).save(root / "images" / f"scene{index}.png")
        palette = Image.fromarray(mask, mode="P")
        palette.putpalette([c for colour in COLOURS.values() for c in colour] + [255] * (768 - 9))
        palette.save(root / "masks" / f"scene{index}.png")
    entries = [{"name": name, "color": colour} for name, colour in COLOURS.items()]
    (root / "classes.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    root = write_set(tmp_path_factory.mktemp("scenes") / "set")
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    flags = ["--data", str(root), "--img-size", "24", "--epochs", "8", "--batch-size", "16", "--lr", "3e-3"]
    flags += ["--out", str(run_dir), "--quiet", "--model-args", *TINY, "--rotate", "0", "--zoom", "none"]
    main(["train", *flags])
    return root, run_dir


def test_a_folder_of_images_and_masks_trains_a_segmenter_far_above_chance(segmentation_run):
    _, run_dir = segmentation_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ranked_by"] == "val_mIoU"
    # chance: everything background gives mIoU ≈ 0.25 (background IoU ≈ 0.75, the others 0)
    assert summary["final_metrics"]["val_mIoU"] > 0.6, summary["final_metrics"]
    config = json.loads((run_dir / "train_config.json").read_text())
    assert config["preset"] == "seg-demo"  # chosen for a segmentation set
    for figure in ("class_iou.png", "segmentations.png", "curves.png"):
        assert Image.open(run_dir / figure).size[0] > 300


def test_the_run_folder_loads_as_a_segmenter_with_its_classes_and_colours(segmentation_run):
    _, run_dir = segmentation_run
    loaded = vitkit.load_model(run_dir)
    assert isinstance(loaded.model, Segmenter) and loaded.segmenter
    assert loaded.class_names == list(COLOURS)
    assert loaded.colours == [tuple(colour) for colour in COLOURS.values()]
    logits = loaded.model(torch.randn(2, 3, 40, 56))
    assert logits.shape == (2, 3, 40, 56)  # any input size


def test_predict_writes_a_palette_mask_at_the_images_own_size_and_an_overlay(segmentation_run, tmp_path, capsys):
    root, run_dir = segmentation_run
    image, truth = _scene(np.random.default_rng(7), size=(36, 60))  # larger than the training size: windows
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    main(["predict", str(run_dir), str(tmp_path / "wide.png"), "--out", str(out), "--json"])
    [result] = json.loads(capsys.readouterr().out)
    assert result["mask"] == str(out / "wide.mask.png") and result["overlay"] == str(out / "wide.overlay.png")
    mask = read_mask(out / "wide.mask.png", read_classes(root))
    assert mask.shape == (36, 60)
    assert Image.open(out / "wide.mask.png").mode == "P"
    assert Image.open(out / "wide.overlay.png").size == (60, 36)
    assert sum(result["areas"].values()) == pytest.approx(1.0)
    assert set(result["areas"]) <= set(COLOURS)
    assert (mask == truth).mean() > 0.8


def test_a_csv_of_image_mask_pairs_is_a_segmentation_set(tmp_path):
    root = write_set(tmp_path / "set", count=6)
    lines = ["image,mask"] + [f"images/scene{i}.png,masks/scene{i}.png" for i in range(6)]
    (root / "pairs.csv").write_text("\n".join(lines) + "\n")
    assert detect_task(str(root / "pairs.csv")) == detect_task(str(root)) == "segmentation"
    data = load_data(str(root / "pairs.csv"), val_fraction=0.34, seed=0)
    assert data.segmentation and data.class_names == list(COLOURS)
    assert len(data.train) == 4 and len(data.val) == 2
    _, mask = data.train[0]
    assert mask.shape == (24, 24) and mask.dtype == torch.uint8


def test_a_csv_row_naming_a_missing_mask_is_an_error_naming_the_line(tmp_path):
    root = write_set(tmp_path / "set", count=3)
    (root / "pairs.csv").write_text(
        "image,mask\nimages/scene0.png,masks/scene0.png\nimages/scene1.png,masks/nope.png\n"
    )
    with pytest.raises(ValueError, match=r"pairs.csv, line 3: the mask .*nope.png does not exist"):
        load_data(str(root / "pairs.csv"))


@pytest.mark.parametrize(
    ("flag", "value"), [("label_smoothing", 0.1), ("mixup", 0.8), ("erase", 0.25), ("train_images", 20)]
)
def test_settings_for_one_class_per_image_are_refused_for_a_segmentation_set(tmp_path, flag, value):
    root = write_set(tmp_path / "set", count=8)
    config = resolve_config(overrides={"data": str(root), "out": str(tmp_path / "run"), flag: value})
    with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} .*segmentation set"):
        train(config, progress=False)


def test_the_task_must_match_the_data(tmp_path):
    with pytest.raises(DataError, match="mnist-canvases is a segmentation set"):
        load_data("mnist-canvases", task="classification")
    with pytest.raises(DataError, match="mnist is a classification set"):
        load_data("mnist", task="segmentation")
    classes = tmp_path / "folder"
    for name in ("images", "masks"):  # a classification folder whose classes happen to be called so
        (classes / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(classes / name / "a.png")
        Image.new("RGB", (8, 8)).save(classes / name / "b.png")
    assert load_data(str(classes), task="classification").class_names == ["images", "masks"]


# ------------------------------------------------------------------ serving
def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(port: int, path: str, body: bytes, content_type: str = "image/png") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture()
def served_segmenter(segmentation_run):
    _, run_dir = segmentation_run
    port = free_port()
    process, output = _start_serving([str(run_dir), "--port", str(port)])
    assert "Uvicorn running" in output, output
    yield run_dir, port
    process.terminate()
    process.wait(timeout=30)


def test_a_served_segmenter_answers_post_segment_over_http(served_segmenter):
    run_dir, port = served_segmenter
    image, _ = _scene(np.random.default_rng(3), size=(30, 50))
    status, answer = _post(port, "/v1/segment", _png_bytes(image))
    assert status == 200, answer
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask_png"]))))
    expected = segment_image(vitkit.load_model(run_dir), Image.fromarray(image))
    assert np.array_equal(mask, expected.mask)  # what the library answers for the same image
    assert (answer["width"], answer["height"]) == (50, 30)
    assert Image.open(io.BytesIO(base64.b64decode(answer["overlay_png"]))).size == (50, 30)
    assert sum(entry["area"] for entry in answer["classes"]) == pytest.approx(1.0)
    assert {entry["label"] for entry in answer["classes"]} <= set(COLOURS)
    # the questions a segmenter cannot answer, and bad images: 4xx, and the server stays up
    status, answer = _post(port, "/v1/predict", _png_bytes(image))
    assert status == 400 and "/v1/segment" in answer["error"]
    assert _post(port, "/v1/segment", b"not an image")[0] == 415
    assert _post(port, "/v1/segment?opacity=2", _png_bytes(image))[0] == 422
    assert _post(port, "/v1/segment", _png_bytes(image))[0] == 200


@pytest.mark.slow
def test_the_page_shows_a_segmenters_classes_with_an_opacity_slider_and_a_legend(segmentation_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _, run_dir = segmentation_run
    image, _ = _scene(np.random.default_rng(5), size=(48, 48))
    Image.fromarray(image).save(tmp_path / "scene.png")
    with served_page([str(run_dir)], tmp_path) as (driver, _):
        WebDriverWait(driver, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(tmp_path / "scene.png"))
        rows = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#legend .legend"))
        assert {row.text.split("\n")[0] for row in rows} <= set(COLOURS)
        assert not driver.find_element(By.ID, "bars").is_displayed()  # no top-k classes for a segmenter
        mask = driver.find_element(By.ID, "mask")
        assert driver.execute_script("return arguments[0].naturalWidth", mask) == 48
        driver.execute_script(
            "const s = document.getElementById('maskOpacity'); s.value = 30; s.dispatchEvent(new Event('input'))"
        )
        assert mask.value_of_css_property("opacity") == "0.3"
        driver.save_screenshot(str(tmp_path / "page.png"))


def test_onnx_export_of_a_segmenter_takes_any_height_and_width(segmentation_run, tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    _, run_dir = segmentation_run
    main(["export", str(run_dir), str(tmp_path / "segmenter.onnx")])
    assert "H×W multiples of 4" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(tmp_path / "segmenter.onnx"), providers=["CPUExecutionProvider"])
    segmenter = vitkit.load_model(run_dir).model
    for shape in ((1, 3, 24, 24), (2, 3, 40, 64)):
        images = torch.randn(shape)
        [logits] = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = segmenter(images)
        assert logits.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4)


def test_the_segmenter_ade20k_preset_trains_a_mask_transformer_with_sgd_and_poly_decay(tmp_path):
    root = write_set(tmp_path / "set", count=12)
    small = {  # the recipe as it is, on a model and images small enough for a test
        "data": str(root),
        "init": None,
        "model": "Ti/16",
        "model_args": dict(item.split("=") for item in TINY),
        "img_size": 24,
        "steps": 3,
        "batch_size": 4,
        "out": str(tmp_path / "run"),
    }
    small["model_args"] = {key: int(value) for key, value in small["model_args"].items()}
    config = resolve_config(preset="segmenter-ade20k", overrides=small)
    assert (config.optimizer, config.schedule, config.decoder, config.weight_decay) == ("sgd", "poly", "mask", 0.0)
    summary = train(config, progress=False)
    assert summary.ranked_by == "val_mIoU" and summary.steps == 3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["decoder"] == {"num_classes": 3, "decoder": "mask", "decoder_depth": 2, "decoder_dim": None}


def test_a_batch_with_every_pixel_ignored_gives_a_zero_loss_not_nan():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((2, 4, 4), 255), dice=1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_commands_for_classifiers_refuse_a_segmenter_or_a_segmentation_set(segmentation_run, tmp_path, capsys):
    root, run_dir = segmentation_run
    with pytest.raises(ValueError, match="is a segmenter: vitkit convert writes classifiers"):
        convert(run_dir, tmp_path / "hf", to="hf")
    assert main(["shards", str(root), str(tmp_path / "shards")]) != 0
    assert "is a segmentation set (a class per pixel); vitkit shards needs labels per image" in capsys.readouterr().err
    features = vitkit.load_model(run_dir).encoder()  # a segmenter's backbone, for features
    assert features.model.config.num_classes == 0 and not features.segmenter


def test_a_hostile_decoder_config_is_refused_before_anything_is_built(segmentation_run, tmp_path):
    _, run_dir = segmentation_run
    folder = tmp_path / "model"
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("tensorboard", "checkpoint*"))
    document = json.loads((folder / "config.json").read_text())
    document["decoder"]["decoder_depth"] = 10**6
    (folder / "config.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r'config.json: "decoder" must be .*decoder_depth": 1-32'):
        vitkit.load_model(folder)


def test_eval_scores_the_runs_own_held_out_images_as_the_run_did(segmentation_run, capsys):
    _, run_dir = segmentation_run
    main(["eval", str(run_dir), "--json"])
    document = json.loads(capsys.readouterr().out)
    last_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert document["split"] == "val" and document["images"] == last_epoch["val_images"] == 5
    # the run scored them at its training size in batches, eval at their own size one by one: the same
    # size here, so the same answer
    assert document["mean_iou"] == pytest.approx(last_epoch["val_mIoU"], abs=1e-3)
    main(["eval", str(run_dir), "--json", "--split", "train"])
    assert json.loads(capsys.readouterr().out)["images"] == 43


@pytest.mark.slow
def test_a_killed_segmentation_run_resumes_to_the_uninterrupted_runs_weights(tmp_path):
    root = write_set(tmp_path / "set", count=40)
    settings = {
        "data": str(root),
        "img_size": 24,
        "model_args": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64},
        "decoder": "mask",
        "decoder_depth": 1,
        "epochs": 3,
        "batch_size": 8,
        "checkpoint_every": 2,
        "out": str(tmp_path / "stopped" / "run"),
    }
    config = resolve_config(overrides=settings)
    resume_run(run_until_checkpoint(config, min_step=6), progress=False)  # stopped mid-epoch, then resumed
    train(resolve_config(overrides={**settings, "out": str(tmp_path / "whole")}), progress=False)
    resumed = load_file(str(tmp_path / "stopped" / "run" / "model.safetensors"))
    uninterrupted = load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert resumed.keys() == uninterrupted.keys() and any(key.startswith("decoder.") for key in resumed)
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
