"""ONNX export, checked in onnxruntime."""

import numpy as np
import onnxruntime
import torch

import vitkit
from vitkit.cli.main import main


def trained_like_model():
    torch.manual_seed(0)
    model = vitkit.create_model("Ti/16", num_classes=10, img_size=32, patch_size=4, depth=2).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.02)
    return model


def test_fixed_size_export_matches_pytorch(tmp_path):
    model = trained_like_model()
    vitkit.save_model(tmp_path / "model", model)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "vit.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"))
    x = torch.randn(1, 3, 32, 32)
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert np.abs(logits - model(x).numpy()).max() <= 1e-4


def test_dynamic_batch_export(tmp_path):
    model = trained_like_model()
    vitkit.save_model(tmp_path / "model", model)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "vit.onnx"), "--dynamic"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"))
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert logits.shape == (batch, 10) and np.abs(logits - model(x).numpy()).max() <= 1e-4
