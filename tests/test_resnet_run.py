"""A BiT ResNet through the same commands as a ViT: trained, evaluated, predicted and served; what
applies only to a ViT (attention figures, int8, pre-training, segmentation) says so."""

import json

import pytest
from fastapi.testclient import TestClient
from test_serve import jpeg

import vitkit
from conftest import digits_config
from vitkit.cli.main import main
from vitkit.data.load import load_data
from vitkit.predict import predict_files
from vitkit.serve import ServeSettings, create_app
from vitkit.train import ConfigError, train


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """BiT-Tiny on the 8×8 digits shown at 32 px: about 99 % held-out top-1 in three epochs (~5 s)."""
    out = tmp_path_factory.mktemp("resnet") / "run"
    config = digits_config(out.parent, model="BiT-Tiny", model_args={}, img_size=32, lr=1e-3, epochs=3, out=str(out))
    summary = train(config, progress=False)
    return out, summary


def test_a_resnet_trains_on_the_engine_and_its_folder_loads(resnet_run):
    out, summary = resnet_run
    assert summary.final_metrics["val_top1"] >= 0.9
    assert "resnetv2" in json.loads((out / "config.json").read_text())
    loaded = vitkit.load_model(out)
    assert isinstance(loaded.model, vitkit.ResNetV2) and loaded.config.img_size == (32, 32)
    assert loaded.config.layers == (1, 1, 1, 1) and loaded.class_names == [str(i) for i in range(10)]


def test_eval_scores_the_runs_own_held_out_images(resnet_run, capsys):
    out, summary = resnet_run
    assert main(["eval", str(out), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["top1"] == pytest.approx(summary.final_metrics["val_top1"], abs=1e-6)


def test_predict_and_serve_answer_with_gradcam_as_the_explanation(resnet_run, tmp_path):
    out, _ = resnet_run
    loaded = vitkit.load_model(out)
    (tmp_path / "a.jpg").write_bytes(jpeg())
    expected = predict_files(loaded, [tmp_path / "a.jpg"], top_k=3)[0].top
    with TestClient(create_app(loaded, ServeSettings(model_name="bit")), base_url="http://localhost") as api:
        assert api.get("/v1/model").json()["explanations"] == ["none", "gradcam"]
        answer = api.post("/v1/predict?top_k=3&explain=gradcam", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        assert [p["label"] for p in answer.json()["predictions"]] == [label for label, _ in expected]
        assert answer.json()["explanation"]["method"] == "gradcam"
        refused = api.post("/v1/predict?explain=relevance", content=jpeg(), headers={"Content-Type": "image/jpeg"})
        assert (
            refused.status_code == 400 and "ResNet" in refused.json()["error"] and "gradcam" in refused.json()["error"]
        )
        assert api.get("/health").json() == {"status": "ok"}


def test_what_needs_a_vit_says_so(resnet_run, tmp_path):
    out, _ = resnet_run
    loaded = vitkit.load_model(out)
    with pytest.raises(ValueError, match=r"int8 quantization is for ViT classifiers.*a ResNet"):
        vitkit.quantize(loaded.model)
    assert main(["inspect", str(out), "--out", str(tmp_path / "figures")]) == 2
    for objective in ("mae", "mpp"):
        config = digits_config(
            tmp_path, model="BiT-Tiny", model_args={}, objective=objective, out=str(tmp_path / objective)
        )
        with pytest.raises(ConfigError, match=f"{objective} pre-training works on a ViT's patch tokens.*choose a ViT"):
            train(config, progress=False)


def test_frozen_features_of_a_resnet_are_its_pooled_map(resnet_run):
    from vitkit.probe.features import extract_features

    out, _ = resnet_run
    loaded = vitkit.load_model(out)
    splits = load_data("digits", in_chans=1)
    features, labels = extract_features(loaded.model, splits.val, loaded.preprocess)
    assert features.shape == (len(splits.val), loaded.config.num_features) and len(labels) == len(splits.val)
    with pytest.raises(ValueError, match="use --pool head"):
        extract_features(loaded.model, splits.val, loaded.preprocess, pool="avg")
