"""Linear layers packed by oneDNN for CPU inference: the same answers as the model they come
from, which they leave alone, and no gradients through them."""

import pytest
import torch

from conftest import randomize_head, tiny_vit
from vitkit.models.segmenter import Segmenter
from vitkit.packed import PackedLinear, pack_linears, packing_runs

pytestmark = pytest.mark.skipif(not packing_runs(torch.device("cpu"), torch.float32), reason="no oneDNN here")


def _linears(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Linear, PackedLinear))]


def test_a_packed_model_answers_as_its_model_and_shares_every_other_weight():
    model = randomize_head(tiny_vit()).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    images = torch.randn(2, 3, 32, 32)
    packed = pack_linears(model, torch.float32)
    with torch.no_grad():
        assert torch.allclose(packed(images), model(images), atol=1e-5)
    # Two blocks of qkv, proj, fc1, fc2 are packed (GELU in fc1); the head stays a plain Linear.
    assert [type(m).__name__ for m in _linears(packed)].count("PackedLinear") == 8
    assert [m.gelu for m in packed.modules() if isinstance(m, PackedLinear)] == [False, False, True, False] * 2
    assert packed.head.weight is model.head.weight and packed.pos_embed is model.pos_embed  # shared, not copied
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(isinstance(m, torch.nn.Linear) for m in _linears(model))  # the model given is unchanged
    assert not any(name.startswith("blocks.0.mlp.fc1") for name in packed.state_dict())  # not for saving


def test_bf16_packing_rounds_as_bf16_autocast_does():
    if not packing_runs(torch.device("cpu"), torch.bfloat16):
        pytest.skip("oneDNN computes no bf16 here")
    model = randomize_head(tiny_vit()).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        exact = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            packed = pack_linears(model, torch.bfloat16)(images).float()
            autocast = model(images).float()
    scale = exact.abs().max()
    assert (packed - exact).abs().max() <= 0.05 * scale and (autocast - exact).abs().max() <= 0.05 * scale


def test_no_gradient_is_taken_through_a_packed_layer():
    packed = pack_linears(tiny_vit(), torch.float32)
    images = torch.randn(1, 3, 32, 32, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward; take gradients through the model it was packed from"):
        packed(images)


def test_a_segmenter_is_packed_backbone_and_decoder_alike():
    segmenter = Segmenter(tiny_vit(), num_classes=3, decoder="mask", decoder_depth=1).eval()
    images = torch.randn(1, 3, 32, 32)
    packed = pack_linears(segmenter, torch.float32)
    assert isinstance(packed.backbone.blocks[1].mlp.fc2, PackedLinear)
    assert any(isinstance(m, PackedLinear) for m in packed.decoder.modules())
    with torch.no_grad():
        assert torch.allclose(packed(images), segmenter(images), atol=1e-5)
