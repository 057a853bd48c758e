"""Export: ONNX checked in onnxruntime, torch.export programs checked in PyTorch."""

import numpy as np
import onnxruntime
import pytest
import torch

import vitkit
from vitkit.cli.main import main


def trained_like_model():
    torch.manual_seed(0)
    model = vitkit.create_model("Ti/16", num_classes=10, img_size=32, patch_size=4, depth=2).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.02)
    return model


@pytest.mark.slow
def test_fixed_size_export_matches_pytorch(tmp_path):
    model = trained_like_model()
    vitkit.save_model(tmp_path / "model", model)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "vit.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"))
    x = torch.randn(1, 3, 32, 32)
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert np.abs(logits - model(x).numpy()).max() <= 1e-4


@pytest.mark.slow
def test_dynamic_export_takes_any_batch_and_image_size(tmp_path):
    model = trained_like_model()
    vitkit.save_model(tmp_path / "model", model)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "vit.onnx"), "--dynamic"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"))
    flexible = vitkit.create_model("Ti/16", num_classes=10, img_size=32, patch_size=4, depth=2, dynamic_img_size=True)
    flexible.load_state_dict(model.state_dict())
    flexible.eval()
    # The trained size, a larger and a smaller grid, and a non-square one.
    for shape in [(1, 3, 32, 32), (5, 3, 32, 32), (2, 3, 48, 48), (1, 3, 16, 16), (3, 3, 24, 40)]:
        x = torch.randn(*shape)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert logits.shape == (shape[0], 10) and np.abs(logits - flexible(x).numpy()).max() <= 1e-4, shape


@pytest.mark.slow
def test_dynamic_export_of_a_hybrid(tmp_path):
    # The ResNet stem's TF "SAME" padding must trace for a free image size too.
    torch.manual_seed(0)
    model = vitkit.create_model(
        "R26+S/32", num_classes=4, img_size=64, depth=1, hybrid_layers=(1, 1), dynamic_img_size=True
    ).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    vitkit.interop.export_onnx(model, tmp_path / "hybrid.onnx", dynamic=True)
    session = onnxruntime.InferenceSession(str(tmp_path / "hybrid.onnx"))
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
        x = torch.randn(*shape)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert np.abs(logits - model(x).numpy()).max() <= 1e-4, shape


def test_relative_position_models_refuse_a_free_image_size(tmp_path):
    model = vitkit.create_model("Ti/16", img_size=32, patch_size=8, depth=1, pos_embed="relative")
    with pytest.raises(ValueError, match="without --dynamic"):
        vitkit.interop.export_onnx(model, tmp_path / "vit.onnx", dynamic=True)


def test_relative_position_models_export_with_a_free_batch(tmp_path):
    # the main job's kind of model: relative positions, average pooling
    model = vitkit.create_model(
        "Ti/16", img_size=28, in_chans=1, num_classes=10, patch_size=7, depth=2, pos_embed="relative", pool="avg"
    ).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    vitkit.interop.export_onnx(model, tmp_path / "vit.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "vit.onnx"))
    for batch in (1, 3):
        x = torch.randn(batch, 1, 28, 28)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert np.abs(logits - model(x).numpy()).max() <= 1e-4, batch


def test_torch_export_program_with_free_size(tmp_path):
    model = trained_like_model()
    vitkit.save_model(tmp_path / "model", model)
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "vit.pt2"), "--format", "pt2", "--dynamic"]) == 0
    program = torch.export.load(str(tmp_path / "vit.pt2")).module()
    flexible = vitkit.create_model("Ti/16", num_classes=10, img_size=32, patch_size=4, depth=2, dynamic_img_size=True)
    flexible.load_state_dict(model.state_dict())
    flexible.eval()
    for shape in [(1, 3, 32, 32), (2, 3, 48, 24)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert (program(x) - flexible(x)).abs().max() <= 1e-5, shape
