import pytest
import torch

import vitkit
from vitkit.benchmark import timm_bit_resnet

# Exact counts of the reference PyTorch implementation (1000 classes, no representation layer, 224 px).
PAPER_COUNTS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "L/16": 304_326_632,
    "H/14": 632_045_800,
}

# Run for real on the CPU; everything else is built and run on the meta device.
REAL = {"vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch32_224", "vit_base_patch32_224"}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,expected", PAPER_COUNTS.items())
def test_parameter_counts_match_the_reference(name, expected):
    with torch.device("meta"):
        model = vitkit.create_model(name)
    assert count(model) == expected


@pytest.mark.parametrize("name", vitkit.list_models())
def test_parameter_count_matches_timm(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours = vitkit.create_model(name)
        # timm registers BiT's own ResNet sizes; vitkit's CPU-sized ones are built from timm's parts
        registered = name in timm.list_models()
        theirs = timm.create_model(name, num_classes=1000) if registered else timm_bit_resnet(ours.config)
    assert count(ours) == count(theirs) == vitkit.models.parameter_count(ours.config)


@pytest.mark.parametrize("name", vitkit.list_models())
def test_every_variant_has_the_right_output_shapes(name):
    config = vitkit.get_config(name)
    device = "cpu" if name in REAL else "meta"
    with torch.device(device):
        model = vitkit.create_model(name, num_classes=7).eval()
        x = torch.randn(2, 3, *config.img_size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    if isinstance(config, vitkit.ResNetV2Config):  # a feature map, 1/32 of the image's side
        assert features.shape == (2, config.num_features, config.img_size[0] // 32, config.img_size[1] // 32)
    else:
        tokens = 1 + config.grid[0] * config.grid[1]
        assert features.shape == (2, tokens, config.embed_dim)
    assert logits.shape == (2, 7)


def test_aliases_resolve_to_timm_names():
    assert vitkit.create_model("B/16", num_classes=0, depth=1).config == vitkit.get_config(
        "vit_base_patch16_224", num_classes=0, depth=1
    )
    assert "B/16" in vitkit.list_models(aliases=True)
    assert "R50+B/16" in vitkit.list_models(aliases=True)
    assert vitkit.get_config("b/16") == vitkit.get_config("B/16")


def test_list_models_filters_with_a_pattern():
    names = vitkit.list_models("*large*")
    assert names and all("large" in n for n in names)
    assert vitkit.list_models("nothing*") == []


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'vit_base_patch16_244'.*vit_base_patch16_224"):
        vitkit.create_model("vit_base_patch16_244")
    with pytest.raises(ValueError, match=r"unknown model 'Q/16'.*list_models"):
        vitkit.create_model("Q/16")


def test_unknown_override_is_an_error_naming_the_field():
    with pytest.raises(TypeError, match="hidden_size"):
        vitkit.create_model("Ti/16", hidden_size=12)


def test_representation_layer_adds_a_tanh_hidden_layer():
    model = vitkit.create_model("Ti/16", representation_size=192)
    assert count(model) == PAPER_COUNTS["Ti/16"] + 192 * 192 + 192
