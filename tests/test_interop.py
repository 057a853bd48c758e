"""Weights from timm load with timm's logits, vitkit weights load in timm, and bad files are refused."""

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import vitkit
from vitkit.interop import convert, read_state_dict, vitkit_to_timm

PARITY = ["vit_tiny_patch16_224", "vit_small_patch16_224"]


def timm_model(name, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():  # a non-zero head, so the logits depend on every weight
        model.head.weight.normal_(std=0.02)
        model.head.bias.normal_(std=0.02)
    return model


def max_logit_difference(a, b, size=224):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", PARITY)
def test_timm_weights_give_timm_logits(name, suffix, tmp_path):
    peer = timm_model(name)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(peer.state_dict(), str(path))
    else:
        torch.save(peer.state_dict(), path)
    ours = vitkit.create_model(name).eval()
    report = vitkit.load_weights(ours, path)
    assert not report.missing and not report.unexpected and not report.adapted, str(report)
    assert max_logit_difference(ours, peer) <= 1e-4


@pytest.mark.parametrize("name", PARITY)
def test_vitkit_weights_load_in_timm(name):
    torch.manual_seed(3)
    ours = vitkit.create_model(name).eval()
    with torch.no_grad():
        ours.head.weight.normal_(std=0.02)
    peer = timm.create_model(name, pretrained=False).eval()
    peer.load_state_dict(vitkit_to_timm(ours.state_dict()))  # strict: every key accounted for
    assert max_logit_difference(ours, peer) <= 1e-4


def test_a_model_timm_cannot_hold_is_not_converted_for_timm(tmp_path):
    model = vitkit.create_model("Ti/16", img_size=32, patch_size=8, depth=1, pos_embed="relative", pool="avg")
    folder = vitkit.save_model(tmp_path / "relative", model)
    with pytest.raises(ValueError, match="pos_embed='relative', which it cannot hold: convert it --to vitkit"):
        convert(folder, tmp_path / "timm.safetensors", to="timm")
    assert not (tmp_path / "timm.safetensors").exists()


@pytest.mark.parametrize("name", PARITY)
def test_resolution_change_224_to_384_matches_timms_resampling(name, tmp_path):
    peer224 = timm_model(name)
    save_file(peer224.state_dict(), str(tmp_path / "w.safetensors"))
    ours = vitkit.create_model(name, img_size=384).eval()
    report = vitkit.load_weights(ours, tmp_path / "w.safetensors")
    assert "pos_embed" in report.adapted

    state = dict(peer224.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=(24, 24), num_prefix_tokens=1)
    peer384 = timm.create_model(name.replace("224", "384"), pretrained=False).eval()
    peer384.load_state_dict(state)
    assert max_logit_difference(ours, peer384, size=384) <= 1e-4


def test_hybrid_timm_weights_give_timm_logits(tmp_path):
    peer = timm_model("vit_small_r26_s32_224")
    save_file(peer.state_dict(), str(tmp_path / "w.safetensors"))
    ours = vitkit.create_model("vit_small_r26_s32_224").eval()
    report = vitkit.load_weights(ours, tmp_path / "w.safetensors")
    assert not report.missing and not report.unexpected, str(report)
    assert max_logit_difference(ours, peer) <= 1e-4
    back = timm.create_model("vit_small_r26_s32_224", pretrained=False)
    back.load_state_dict(vitkit_to_timm(ours.state_dict()))


def test_another_class_count_gets_a_fresh_zero_head(tmp_path):
    save_file(timm_model("vit_tiny_patch16_224").state_dict(), str(tmp_path / "w.safetensors"))
    ours = vitkit.create_model("Ti/16", num_classes=7)
    report = vitkit.load_weights(ours, tmp_path / "w.safetensors")
    assert set(report.adapted) == {"head.weight", "head.bias"}
    assert torch.count_nonzero(ours.head.weight) == 0


def test_wrong_variant_names_the_tensor_and_both_shapes(tmp_path):
    save_file(timm_model("vit_tiny_patch16_224").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"cannot load [\w.]+: the weights have shape \([\d, ]*192,?\) but the model "
        r"needs \([\d, ]*384,?\); are the weights for another model variant",
    ):
        vitkit.load_weights(vitkit.create_model("S/16"), tmp_path / "w.safetensors")


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_a_malicious_pickle_is_refused_and_its_payload_never_runs(tmp_path):
    sentinel = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"weights": _Payload(str(sentinel))}, handle)
    torch.save({"weights": _Payload(str(sentinel))}, tmp_path / "evil_zip.pth")
    for bad in (path, tmp_path / "evil_zip.pth"):
        with pytest.raises(ValueError, match="refused to load"):
            vitkit.load_weights(vitkit.create_model("Ti/16"), bad)
    assert not sentinel.exists()


def test_truncated_and_corrupt_files_give_clear_errors(tmp_path):
    model = vitkit.create_model("Ti/16")
    save_file(model.state_dict(), str(tmp_path / "full.safetensors"))
    torch.save(model.state_dict(), tmp_path / "full.pth")
    for name in ("full.safetensors", "full.pth"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / f"cut_{name}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="cut_full"):
            read_state_dict(cut)
    (tmp_path / "noise.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "noise.safetensors")
    with pytest.raises(ValueError, match=r"unknown weight format '\.h5'"):
        (tmp_path / "w.h5").write_bytes(b"")
        read_state_dict(tmp_path / "w.h5")
