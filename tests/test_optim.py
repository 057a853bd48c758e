"""Which parameters decay (each module says what it exempts: timm's no_weight_decay convention),
and layer-wise learning-rate decay built on the model's group_matcher."""

import pytest
import timm.optim
from torch import nn

from conftest import digits_config, tiny_vit
from vitkit.pretrain import MaskedAutoencoder, MaskedPatchPrediction
from vitkit.train import ConfigError, train
from vitkit.train.optim import build_optimizer, param_groups
from vitkit.train.run import build_model


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
        assert "mask_token" in no_decay and "encoder.cls_token" in no_decay and "encoder.pos_embed" in no_decay


def test_timms_optimiser_factory_reads_the_same_exemptions():
    model = tiny_vit()
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    exempt = {n for g in optimizer.param_groups if g["weight_decay"] == 0.0 for n in _names(model, g)}
    assert {"cls_token", "pos_embed"} <= exempt


def test_layer_decay_scales_each_depth_as_timm_does():
    model = tiny_vit(depth=4)
    ours = param_groups(model, 0.05, layer_decay=0.75)
    peer = timm.optim.param_groups_layer_decay(
        model, weight_decay=0.05, layer_decay=0.75, no_weight_decay_list=model.no_weight_decay()
    )

    def scale_of(groups):
        return {id(p): (round(g["lr_scale"], 9), g["weight_decay"]) for g in groups for p in g["params"]}

    assert scale_of(ours) == scale_of(peer)
    names = {id(p): n for n, p in model.named_parameters()}
    first = {names[id(p)] for p in ours[0]["params"]} | {names[id(p)] for p in ours[1]["params"]}
    assert ours[0]["lr_scale"] == 1.0 and first == {"head.weight", "head.bias"}  # the top layer first
    assert scale_of(ours)[id(model.cls_token)] == (round(0.75**5, 9), 0.0)  # the stem, 5 layers down


def test_layer_decay_sets_each_groups_learning_rate_and_needs_a_vit(tmp_path):
    config = digits_config(tmp_path, layer_decay=0.5, epochs=1)
    model = build_model(config, num_classes=10, in_chans=1)
    optimizer = build_optimizer(model, config)
    lrs = sorted({round(g["lr"] / config.lr, 9) for g in optimizer.param_groups}, reverse=True)
    assert lrs == [1.0, 0.5, 0.25, 0.125]  # head, block 1 + final norm, block 0, stem (TINY has 2 blocks)
    assert train(config, progress=False).final_top1 > 0.2
    with pytest.raises(ConfigError, match="--layer-decay needs a model that says its layers"):
        param_groups(MaskedAutoencoder(tiny_vit(), decoder_dim=16, decoder_depth=1, decoder_heads=2), 0.05, 0.75)
