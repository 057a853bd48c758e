"""Which parameters decay: each module says what it exempts (timm's no_weight_decay convention)."""

import pytest
import timm.optim
from conftest import tiny_vit
from torch import nn

from vitkit.pretrain import MaskedAutoencoder, MaskedPatchPrediction
from vitkit.train.optim import param_groups


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("pos_embed", ["learn", "learn2d", "relative", "sincos2d", "none"])
def test_tokens_position_tables_and_vectors_do_not_decay(pos_embed):
    model = tiny_vit(pos_embed=pos_embed)
    decay, no_decay = (_names(model, g) for g in param_groups(model, 0.1))
    assert decay | no_decay == {n for n, _ in model.named_parameters()} and not decay & no_decay
    vectors = {n for n, p in model.named_parameters() if p.ndim <= 1}  # biases, norm scales
    assert no_decay == vectors | model.no_weight_decay()
    assert "cls_token" in no_decay and (pos_embed in ("sincos2d", "none") or any("pos" in n for n in no_decay))
    assert {n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)} == {
        n.rsplit(".", 1)[0] for n in decay
    }


def test_pretraining_heads_exempt_their_mask_token():
    for objective in (
        MaskedPatchPrediction(tiny_vit(num_classes=0)),
        MaskedAutoencoder(tiny_vit(num_classes=0), decoder_dim=32, decoder_depth=1, decoder_heads=2),
    ):
        no_decay = _names(objective, param_groups(objective, 0.1)[1])
        assert "mask_token" in no_decay and "encoder.cls_token" in no_decay and "encoder.pos_embed.weight" in no_decay


def test_timms_optimiser_factory_reads_the_same_exemptions():
    model = tiny_vit()
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    exempt = {n for g in optimizer.param_groups if g["weight_decay"] == 0.0 for n in _names(model, g)}
    assert {"cls_token", "pos_embed.weight"} <= exempt
