"""The hybrid's CNN stem (paper §3.1 "Hybrid Architecture"): a BiT-style ResNet v1.

Weight-standardised convolutions with GroupNorm and TensorFlow "SAME" padding, as in the
reference JAX models, so their weights give the same feature maps. R50 uses stages (3, 4, 9)
(output stride 16, 1024 channels); R26 uses (2, 2, 2, 2) (output stride 32, 2048 channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embed import Grid, PatchEmbed, lecun_normal_


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output = ceil(size / stride); any odd pixel of padding goes after."""
    # With size = q·stride + r the last window starts at (ceil(size/stride) - 1)·stride, so it
    # overhangs by kernel - r (kernel - stride when r = 0). Written this way the padding of the
    # sizes a dynamic-size export traces (multiples of the stride) is a constant, which keeps the
    # traced size expressions small.
    remainder = size % stride
    total = max(kernel - (remainder or stride), 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    """Pad ``x`` (B, C, H, W) so a ``kernel``/``stride`` window gives TF "SAME" output size."""
    top, bottom = _same_padding(x.shape[-2], kernel, stride)
    left, right = _same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (zero mean, unit variance per output filter).

    eps 1e-8 as in the PyTorch ports of the Google weights.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_chans, out_chans, kernel_size, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        w = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0, eps=1e-8)
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w.reshape_as(self.weight), None, self.stride)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-5)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (carries the stride) → 1×1, GroupNorm after each; projection when the shape changes."""

    def __init__(self, in_chans: int, width: int, stride: int) -> None:
        super().__init__()
        out_chans = width * 4
        self.conv1, self.gn1 = StdConv2d(in_chans, width, 1), _group_norm(width)
        self.conv2, self.gn2 = StdConv2d(width, width, 3, stride), _group_norm(width)
        self.conv3, self.gn3 = StdConv2d(width, out_chans, 1), _group_norm(out_chans)
        self.proj: nn.Module | None = None
        if stride != 1 or in_chans != out_chans:
            self.proj = nn.Sequential(StdConv2d(in_chans, out_chans, 1, stride), _group_norm(out_chans))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(y + shortcut)


class ResNetStem(nn.Module):
    """Root (7×7/2 conv, GroupNorm, ReLU, 3×3/2 max-pool) followed by bottleneck stages.

    The first stage keeps the resolution, each later one halves it, so the output stride is
    ``4 * 2 ** (len(layers) - 1)`` and the output has ``256 * 2 ** (len(layers) - 1)`` channels.
    """

    def __init__(self, layers: tuple[int, ...], in_chans: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv_root, self.gn_root = StdConv2d(in_chans, width, 7, 2), _group_norm(width)
        stages, channels = [], width
        for index, depth in enumerate(layers):
            stage_width = width * 2**index
            units = []
            for unit in range(depth):
                stride = 2 if index > 0 and unit == 0 else 1
                units.append(Bottleneck(channels, stage_width, stride))
                channels = stage_width * 4
            stages.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*stages)
        self.out_chans = channels
        self.stride = 4 * 2 ** (len(layers) - 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.gn_root(self.conv_root(x)))
        x = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        return self.stages(x)


class HybridEmbed(nn.Module):
    """CNN feature map → tokens: the ResNet stem, then a patch embedding over its output
    (1×1 patches in the paper, so each feature-map position becomes one token)."""

    def __init__(self, *, layers: tuple[int, ...], in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.backbone = ResNetStem(layers, in_chans)
        self.patch = PatchEmbed(in_chans=self.backbone.out_chans, embed_dim=embed_dim, patch_size=patch_size)

    @property
    def proj(self) -> nn.Conv2d:
        return self.patch.proj

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """LeCun-normal convolutions with zero biases, group norms at identity."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                lecun_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                module.reset_parameters()

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        return self.patch(self.backbone(x))
