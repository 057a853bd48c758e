"""vitkit's ViT keeps timm's model contract, so timm's own tools work on it unchanged:
attributes, create_model's keyword arguments, reset_classifier, the optimiser factory with
layer-wise decay, and the data config."""

import warnings
from collections import Counter

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_model_data_config
from timm.models import save_for_hf
from timm.optim import create_optimizer_v2
from torchvision.models.feature_extraction import create_feature_extractor

import vitkit

ATTRIBUTES = ("num_classes", "embed_dim", "num_features", "head_hidden_size", "num_prefix_tokens", "global_pool")


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_the_attributes_timms_tools_read_have_timms_values(pool):
    ours = vitkit.create_model("vit_tiny_patch16_224", pretrained=False, global_pool=pool, num_classes=7)
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False, global_pool=pool, num_classes=7)
    assert {a: getattr(ours, a) for a in ATTRIBUTES} == {a: getattr(peer, a) for a in ATTRIBUTES}
    assert ours.get_classifier().out_features == peer.get_classifier().out_features == 7


def test_create_model_takes_timms_keyword_arguments():
    model = vitkit.create_model("vit_tiny_patch16_224", pretrained=False, drop_rate=0.1, drop_path_rate=0.2)
    assert (model.config.dropout, model.config.drop_path) == (0.1, 0.2)
    with pytest.raises(ValueError, match="give drop_rate= or dropout=, not both"):
        vitkit.create_model("vit_tiny_patch16_224", drop_rate=0.1, dropout=0.2)


def test_reset_classifier_takes_timms_arguments():
    model = vitkit.create_model("vit_tiny_patch16_224")
    model.reset_classifier(5, "avg")
    assert model.global_pool == "avg" and model.num_classes == 5
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 1:].mean(1))
        assert model(x).shape == (2, 5)


def test_timms_optimiser_factory_builds_the_same_layer_decay_groups():
    def groups(model):
        optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
        return Counter((round(g["lr_scale"], 6), g["weight_decay"], len(g["params"])) for g in optimizer.param_groups)

    ours = vitkit.create_model("vit_small_patch16_224", num_classes=10)
    peer = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10)
    assert groups(ours) == groups(peer)
    assert len(create_optimizer_v2(ours, "adamw", layer_decay=0.75).param_groups) == 28


def test_timms_data_config_sees_vitkits_inputs_and_the_weights_own(tmp_path):
    scratch = vitkit.create_model("S/16", img_size=32, patch_size=4, in_chans=1)
    assert resolve_model_data_config(scratch) == {
        "input_size": (1, 32, 32),
        "interpolation": "bilinear",
        "mean": (0.5,),
        "std": (0.5,),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_for_hf(peer, str(tmp_path / "repo"), safe_serialization=True)
    loaded = vitkit.load_model(tmp_path / "repo").model
    assert resolve_model_data_config(loaded) == resolve_model_data_config(peer)


@pytest.mark.parametrize("out_indices", [3, (2, 5)])
def test_features_only_gives_timms_feature_maps(out_indices):
    ours = vitkit.create_model("vit_tiny_patch16_224", features_only=True, out_indices=out_indices)
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False, features_only=True, out_indices=out_indices)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert [m.shape for m in ours(x)] == [m.shape for m in peer(x)]
    assert ours.feature_info.channels() == peer.feature_info.channels()
    assert ours.feature_info.reduction() == peer.feature_info.reduction()
    assert ours.feature_info.module_name() == peer.feature_info.module_name()
    assert len(ours.model.blocks) == max(ours.out_indices) + 1  # nothing computed past the last map


def test_features_only_maps_equal_timms_for_the_same_weights(tmp_path):
    peer = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    save_file(peer.state_dict(), str(tmp_path / "timm.safetensors"))
    ours = vitkit.create_model("vit_tiny_patch16_224", features_only=True, out_indices=(1, 11)).eval()
    vitkit.load_weights(ours.model, tmp_path / "timm.safetensors")
    peer_maps = timm.create_model("vit_tiny_patch16_224", pretrained=False, features_only=True, out_indices=(1, 11))
    missing, _ = peer_maps.model.load_state_dict(peer.state_dict(), strict=False)
    assert not missing
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(ours(x), peer_maps.eval()(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_torchvisions_feature_extractor_traces_the_model():
    """FX tracing: torchvision's create_feature_extractor needs a graph without Python branches on tensors."""
    model = vitkit.create_model("vit_tiny_patch16_224").eval()
    extractor = create_feature_extractor(model, return_nodes={"blocks.5": "block5", "norm": "tokens", "head": "logits"})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = extractor(x)
        assert out["block5"].shape == (2, 197, 192)
        torch.testing.assert_close(out["tokens"], model.forward_features(x))
        torch.testing.assert_close(out["logits"], model(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the traced graph still picks the kernel per dtype
            torch.testing.assert_close(extractor(x)["logits"].float(), model(x).float())


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "vit_small_patch16_224"])
def test_state_dicts_load_both_ways_with_a_plain_load_state_dict(name):
    peer = timm.create_model(name, pretrained=False, num_classes=10).eval()
    ours = vitkit.create_model(name, num_classes=10).eval()
    assert list(ours.state_dict()) == list(peer.state_dict())
    ours.load_state_dict(peer.state_dict())  # strict: every key, every shape
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), atol=1e-4, rtol=1e-4)
        ours.init_weights()
        torch.nn.init.normal_(ours.head.weight, std=0.02)
        peer.load_state_dict(ours.state_dict())
        torch.testing.assert_close(peer(x), ours(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["vit_small_patch16_224.augreg_in21k", "vit_small_patch16_224.dino"])
def test_a_tag_without_pretrained_builds_the_tags_head_and_inputs_as_timm_does(name):
    ours = vitkit.create_model(name, pretrained=False)
    peer = timm.create_model(name, pretrained=False)
    assert ours.num_classes == peer.num_classes
    assert resolve_model_data_config(ours) == resolve_model_data_config(peer)
    assert ours.pretrained_cfg["fixed_input_size"] and ours.in_chans == 3


def test_device_and_dtype_place_the_model_and_a_new_head_follows_it():
    model = vitkit.create_model("vit_tiny_patch16_224", device="meta", dtype=torch.float64).train()
    model.reset_classifier(2)
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.float64)}
    assert model.head.training
    with pytest.raises(TypeError, match="not_a_model_arg"):
        vitkit.create_model("vit_tiny_patch16_224", device="meta", not_a_model_arg=1)


@pytest.mark.parametrize("pos_embed", ["learn", "learn2d"])
def test_frozen_parameters_stay_frozen_through_resizing_and_a_new_head(pos_embed):
    model = vitkit.create_model("vit_tiny_patch16_224", pos_embed=pos_embed)
    model.requires_grad_(False)
    model.set_input_size(img_size=(448, 448))
    model.reset_classifier(0)
    assert model.config.img_size == (448, 448)
    assert not [name for name, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(ValueError, match="cannot change the patch size"):
        model.set_input_size(patch_size=8)


def test_feature_maps_carry_the_models_input_config():
    maps = vitkit.create_model("vit_tiny_patch16_224.augreg_in21k", features_only=True, feature_cls="getter")
    assert maps.default_cfg == maps.pretrained_cfg == maps.model.pretrained_cfg
    assert resolve_model_data_config(maps)["crop_pct"] == 0.9


def test_torchscript_by_tracing_and_by_scripting_the_fx_graph():
    """``torch.jit.script`` of the module itself is not supported (PyTorch deprecates it); a traced
    module and a scripted FX graph compute the model's logits."""
    model = vitkit.create_model("vit_tiny_patch16_224", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no Python branch on traced values
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notice
        traced = torch.jit.trace(model, x)
        scripted = torch.jit.script(torch.fx.symbolic_trace(model))
        expected = model(x)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(scripted(x), expected)
