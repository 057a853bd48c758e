import pytest
import torch

import vitkit
from vitkit.models.hybrid import ResNetStem, pad_same


@pytest.mark.parametrize("layers,stride,channels", [((3, 4, 9), 16, 1024), ((2, 2, 2, 2), 32, 2048)])
def test_output_stride_and_channels(layers, stride, channels):
    stem = ResNetStem(layers)
    with torch.device("meta"):
        features = ResNetStem(layers)(torch.randn(1, 3, 224, 224))
    assert stem.stride == stride and stem.out_chans == channels
    assert features.shape == (1, channels, 224 // stride, 224 // stride)


def test_r26_feature_map_on_a_real_image_size():
    stem = ResNetStem((2, 2, 2, 2)).eval()
    with torch.no_grad():
        assert stem(torch.randn(1, 3, 64, 96)).shape == (1, 2048, 2, 3)


def test_hybrid_tokens_are_feature_map_positions():
    model = vitkit.create_model("R50+B/16", num_classes=0, depth=1)
    assert model.config.stride == 16 and model.config.grid == (14, 14)
    with torch.device("meta"):
        model = vitkit.create_model("R50+B/16", num_classes=0)
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 197, 768)


def test_same_padding_puts_the_odd_pixel_after():
    x = torch.zeros(1, 1, 8, 8)
    padded = pad_same(x, kernel=3, stride=2, value=1.0)
    assert padded.shape == (1, 1, 9, 9)  # 0 before, 1 after: TF "SAME" for even inputs
    assert padded[0, 0, 0, 0] == 0 and padded[0, 0, -1, -1] == 1


def test_weight_standardisation_ignores_filter_scale():
    stem = ResNetStem((1,)).eval()
    x = torch.randn(1, 3, 32, 32)
    reference = stem.conv_root(x)
    with torch.no_grad():
        stem.conv_root.weight.mul_(5.0).add_(0.3)
    torch.testing.assert_close(stem.conv_root(x), reference, atol=1e-4, rtol=1e-4)
