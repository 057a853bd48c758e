"""BiT's ResNet-v2: the same logits as timm's for the same weights, any input size, the
initialisation BiT starts from, its names, its model folders and its explanation (Grad-CAM)."""

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models._hub import save_for_hf

import vitkit
from vitkit.analysis.explain import explanation_maps
from vitkit.benchmark import timm_bit_resnet
from vitkit.interop.convert import convert
from vitkit.models.resnet import ResNetV2, ResNetV2Config


@pytest.mark.parametrize(
    ("timm_name", "config"),
    [
        ("resnetv2_50x1_bit", ResNetV2Config(num_classes=10)),
        ("resnetv2_50x3_bit", ResNetV2Config(width_factor=3, num_classes=5)),
    ],
)
def test_timms_weights_give_timms_logits(timm_name, config):
    reference = timm.create_model(timm_name, pretrained=False, num_classes=config.num_classes).eval()
    with torch.no_grad():  # away from BiT's zero start, so every layer shapes the logits
        for parameter in reference.parameters():
            parameter.normal_(std=0.05)
    model = ResNetV2(config).eval()
    model.load_state_dict(reference.state_dict())  # strict: the same names and shapes
    images = torch.randn(2, 3, 97, 130)  # odd sizes: the padding must match too
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-4)
        torch.testing.assert_close(
            model.forward_features(images), reference.forward_features(images), rtol=0, atol=1e-4
        )


def test_a_fresh_resnet_starts_with_identity_blocks_and_a_zero_head():
    model = ResNetV2(ResNetV2Config(layers=(1, 1, 1, 1), root_width=32, num_classes=3, in_chans=1))
    assert model(torch.randn(2, 1, 28, 28)).abs().max() == 0  # zero classifier
    features = model.forward_features(torch.randn(2, 1, 64, 48))
    assert features.shape == (2, model.config.num_features, 2, 2)
    assert model.config.num_features == 32 * 4 * 8
    with pytest.raises(ValueError, match="root_width a multiple of 32"):
        ResNetV2Config(root_width=48)


@pytest.mark.parametrize("name", ["resnetv2_tiny_bit", "resnetv2_small_bit"])
def test_the_cpu_sized_variants_are_timms_resnetv2_at_that_shape(name):
    config = vitkit.get_config(name, num_classes=4, in_chans=1)
    reference = timm_bit_resnet(config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(std=0.05)
    model = ResNetV2(config).eval()
    model.load_state_dict(reference.state_dict())
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images), rtol=0, atol=1e-4)


def test_registered_under_timms_names_and_bits_own():
    assert {"resnetv2_50x1_bit", "resnetv2_152x4_bit", "resnetv2_tiny_bit"} <= set(vitkit.list_models("resnetv2_*"))
    assert vitkit.get_config("BiT-R50x3") == ResNetV2Config(width_factor=3)
    assert vitkit.get_config("bit-r101x1").layers == (3, 4, 23, 3)
    assert vitkit.get_config("BiT-Tiny").root_width == 32
    with pytest.raises(ValueError, match="did you mean 'resnetv2_50x1_bit'"):
        vitkit.get_config("resnetv2_50x1_bt")
    model = vitkit.create_model("resnetv2_50x1_bit", num_classes=7, img_size=96)
    assert isinstance(model, ResNetV2) and model(torch.randn(1, 3, 96, 96)).shape == (1, 7)
    with pytest.raises(ValueError, match="is a ResNet"):
        vitkit.create_model("BiT-Tiny", features_only=True)


def test_the_config_round_trips_and_refuses_what_it_cannot_build():
    config = ResNetV2Config(layers=(2, 2), root_width=64, img_size=(40, 56), in_chans=1, dropout=0.1, drop_path=0.2)
    assert ResNetV2Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.describe() == "BiT ResNet-v2, stages 2+2 of bottlenecks, width ×1 (512 features) at 40 px"
    for bad, match in (
        ({"layers": ()}, "one or more stages"),
        ({"drop_path": 1.0}, "probability"),
        ({"layers": "3463"}, "layers must be"),
        ({"img_size": 0}, "positive img_size"),
    ):
        with pytest.raises(ValueError, match=match):
            ResNetV2Config(**bad)
    with pytest.raises(TypeError, match=r"unknown ResNetV2Config field.*patch_size"):
        config.replace(patch_size=16)


def test_stochastic_depth_and_dropout_act_in_training_only():
    model = ResNetV2(ResNetV2Config(layers=(1, 2), num_classes=3, dropout=0.5, drop_path=0.5))
    rates = [getattr(block.drop_path, "p", 0.0) for stage in model.stages for block in stage.blocks]
    assert rates == [0.0, 0.25, 0.5]  # linear in depth, as timm and the ViT's drop_path
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.05)
    images = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))


def test_a_model_folder_and_timms_hub_folder_give_the_same_logits(tmp_path):
    reference = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=5).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(std=0.05)
    save_for_hf(reference, tmp_path / "timm")  # timm's own hub layout: config.json + weights
    images = torch.randn(2, 3, 64, 64)
    loaded = vitkit.load_model(tmp_path / "timm")
    assert isinstance(loaded.model, ResNetV2)
    assert loaded.preprocess.mean == tuple(reference.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)  # BiT's
    with torch.no_grad():
        expected = reference(images)
        torch.testing.assert_close(loaded.model(images), expected, rtol=0, atol=1e-4)
        vitkit.save_model(tmp_path / "vitkit", loaded.model, class_names=list("abcde"))
        document = json.loads((tmp_path / "vitkit" / "config.json").read_text())
        assert "resnetv2" in document and "vit" not in document
        again = vitkit.load_model(tmp_path / "vitkit")
        assert again.class_names == list("abcde")
        torch.testing.assert_close(again.model(images), expected, rtol=0, atol=1e-4)
        save_file(reference.state_dict(), tmp_path / "bare.safetensors")  # a bare file, its architecture named
        bare = vitkit.load_model(tmp_path / "bare.safetensors", architecture="BiT-R50x1")
        assert bare.config.num_classes == 5
        torch.testing.assert_close(bare.model(images), expected, rtol=0, atol=1e-4)


def test_a_folder_naming_two_architectures_is_refused(tmp_path):
    vitkit.save_model(tmp_path / "m", ResNetV2(ResNetV2Config(layers=(1,), num_classes=2)))
    path = tmp_path / "m" / "config.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "vit": vitkit.ViTConfig().to_dict()}))
    with pytest.raises(ValueError, match="one architecture"):
        vitkit.load_model(tmp_path / "m")


def test_gradcam_explains_a_resnet_and_attention_methods_say_why_not():
    model = ResNetV2(ResNetV2Config(layers=(1, 1), num_classes=3))  # output stride 8: a 4×4 map at 32 px
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(std=0.05)
    images = torch.randn(2, 3, 32, 32)
    maps = explanation_maps(model, images, "gradcam")  # the predicted class: evidence for it is there
    assert (
        maps.shape == (2, 4, 4)
        and maps.amin(dim=(1, 2)).tolist() == [0, 0]
        and maps.amax(dim=(1, 2)).tolist() == [1, 1]
    )
    others = [explanation_maps(model, images, "gradcam", target=c) for c in range(3)]
    assert any(not torch.equal(maps, other) for other in others)  # another class, another map
    for method in ("rollout", "relevance"):
        with pytest.raises(ValueError, match="ResNet has none of; explain a ResNet with gradcam"):
            explanation_maps(model, images, method)


def test_convert_writes_a_resnet_for_timm_and_says_why_not_for_transformers_or_google(tmp_path):
    reference = ResNetV2(ResNetV2Config(layers=(1, 1), num_classes=3))
    vitkit.save_model(tmp_path / "m", reference)
    convert(tmp_path / "m", tmp_path / "timm.safetensors", to="timm")
    theirs = timm_bit_resnet(reference.config).eval()
    theirs.load_state_dict(load_file(str(tmp_path / "timm.safetensors")))  # strict: timm's names and shapes
    for to, dst in (("hf", "hf"), ("npz", "x.npz")):
        with pytest.raises(ValueError, match=r"is a BiT ResNet.*convert it --to timm"):
            convert(tmp_path / "m", tmp_path / dst, to=to)
