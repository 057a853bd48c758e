"""Google .npz checkpoints: written files read by timm's own npz loader; every layout read back."""

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import _load_weights as timm_load_npz

import vitkit
from vitkit.interop.npz import save_npz, vitkit_to_npz


def random_model(name="Ti/16", **kwargs):
    torch.manual_seed(0)
    model = vitkit.create_model(name, **kwargs).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.02)
        model.head.bias.normal_(std=0.02)
    return model


def logits(model, size=224):
    with torch.no_grad():
        return model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)))


def test_written_npz_loads_in_timm_with_the_same_logits(tmp_path):
    ours = random_model()
    save_npz(tmp_path / "vit.npz", ours.state_dict(), ours.config.num_heads)
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    timm_load_npz(peer, str(tmp_path / "vit.npz"))
    assert (logits(peer) - logits(ours)).abs().max().item() <= 1e-4


def test_vit_jax_npz_reads_back_exactly(tmp_path):
    ours = random_model(representation_size=192)
    save_npz(tmp_path / "vit.npz", ours.state_dict(), ours.config.num_heads)
    again = vitkit.create_model("Ti/16", representation_size=192).eval()
    report = vitkit.load_weights(again, tmp_path / "vit.npz", keep_pre_logits=True)
    assert not report.missing and not report.unexpected
    assert torch.equal(logits(again), logits(ours))


def _big_vision(arrays, scan):
    """The same weights as big_vision writes them: params/ prefix, its sub-module names, a
    position embedding without the class row, and optionally the blocks stacked ("scan")."""
    converted = {}
    for name, array in arrays.items():
        name = name.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
        name = name.replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0")
        if name == "Transformer/posembed_input/pos_embedding":
            array = array[:, 1:]
        converted[f"params/{name}"] = array
    if scan:
        stacked = {}
        for name in [n for n in converted if "/encoderblock_" in n]:
            rest = name.split("/encoderblock_")[1].split("/", 1)[1]
            stacked.setdefault(f"params/Transformer/encoderblock/{rest}", []).append(
                (int(name.split("/encoderblock_")[1].split("/")[0]), converted.pop(name))
            )
        converted.update({k: np.stack([a for _, a in sorted(v)]) for k, v in stacked.items()})
    return converted


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_layouts(tmp_path, scan):
    ours = random_model()
    with torch.no_grad():
        ours.pos_embed[:, 0] = 0  # big_vision gives the class token no position
    arrays = _big_vision(vitkit_to_npz(ours.state_dict(), ours.config.num_heads), scan)
    np.savez(tmp_path / "bv.npz", **arrays)
    again = vitkit.create_model("Ti/16").eval()
    report = vitkit.load_weights(again, tmp_path / "bv.npz")
    assert not report.missing and not report.unexpected, str(report)
    torch.testing.assert_close(logits(again), logits(ours), atol=1e-5, rtol=1e-5)


def test_opt_target_prefix_and_bfloat16_arrays(tmp_path):
    ours = random_model()
    arrays = vitkit_to_npz(ours.state_dict(), ours.config.num_heads)
    as_bf16 = {}
    for name, array in arrays.items():
        top_half = (np.ascontiguousarray(array, np.float32).view(np.uint32) >> 16).astype(np.uint16)
        as_bf16[f"opt/target/{name}"] = top_half.view("V2")  # how bfloat16 arrays come out of JAX
    np.savez(tmp_path / "bf16.npz", **as_bf16)
    again = vitkit.create_model("Ti/16").eval()
    vitkit.load_weights(again, tmp_path / "bf16.npz")
    expected = ours.state_dict()["blocks.3.mlp.fc1.weight"]
    truncated = (expected.view(torch.int32) & ~0xFFFF).view(torch.float32)  # bf16 keeps the top 16 bits
    assert torch.equal(again.state_dict()["blocks.3.mlp.fc1.weight"], truncated)


def test_fine_tune_resolution_from_npz(tmp_path):
    ours = random_model()
    save_npz(tmp_path / "vit.npz", ours.state_dict(), ours.config.num_heads)
    bigger = vitkit.create_model("Ti/16", img_size=384, num_classes=10)
    report = vitkit.load_weights(bigger, tmp_path / "vit.npz")
    assert set(report.adapted) == {"pos_embed", "head.weight", "head.bias"}


def test_pickled_npz_is_refused(tmp_path):
    with open(tmp_path / "evil.npz", "wb") as handle:
        np.savez(handle, thing=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        vitkit.load_weights(vitkit.create_model("Ti/16"), tmp_path / "evil.npz")


def test_hybrid_npz_round_trips_through_timms_reader(tmp_path):
    ours = random_model("R26+S/32")
    save_npz(tmp_path / "hybrid.npz", ours.state_dict(), ours.config.num_heads)
    peer = timm.create_model("vit_small_r26_s32_224", pretrained=False).eval()
    timm_load_npz(peer, str(tmp_path / "hybrid.npz"))
    assert (logits(peer) - logits(ours)).abs().max().item() <= 1e-4
    again = vitkit.create_model("R26+S/32").eval()
    report = vitkit.load_weights(again, tmp_path / "hybrid.npz")
    assert not report.missing and not report.unexpected, str(report)
    assert torch.equal(logits(again), logits(ours))


def test_create_model_with_weights(tmp_path):
    ours = random_model()
    save_npz(tmp_path / "vit.npz", ours.state_dict(), ours.config.num_heads)
    same = vitkit.create_model("Ti/16", weights=tmp_path / "vit.npz").eval()
    assert torch.equal(logits(same), logits(ours))
    tuned = vitkit.create_model("Ti/16", weights=tmp_path / "vit.npz", num_classes=10, img_size=384)
    assert tuned.pos_embed.shape == (1, 577, 192) and torch.count_nonzero(tuned.head.weight) == 0
