"""BiT's ResNet-v2: the same logits as timm's for the same weights, any input size, and the
initialisation BiT starts from."""

import pytest
import timm
import torch

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
