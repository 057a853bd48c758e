"""BiT's ResNet-v2 (Kolesnikov et al., "Big Transfer", ECCV 2020), the CNN baseline the paper
compares ViT with (Figures 3-5): pre-activation bottlenecks, every convolution weight-standardised
and every normalisation a GroupNorm (32 groups), so that it trains at any batch size and transfers.

The module names and the padding follow timm's ``resnetv2_*_bit`` models, so their weights load as
they are and give the same logits: a 7×7/2 root convolution, a 1-pixel zero pad and a 3×3/2
max-pool, four stages of bottlenecks (the first at stride 1, the others halving the resolution;
the stride sits on the 3×3 convolution), a final GroupNorm + ReLU, global average pooling and a
1×1-convolution classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ResNetV2Config:
    """A BiT ResNet-v2: ``layers`` bottlenecks per stage, ``width_factor`` × the standard widths
    (64 at the root; 256, 512, 1024, 2048 out of the stages)."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    num_classes: int = 1000
    in_chans: int = 3
    #: channels of the root convolution at width factor 1 (64 in BiT; 32 for tiny variants)
    root_width: int = 64

    def __post_init__(self) -> None:
        if not self.layers or min(self.layers) < 1:
            raise ValueError(f"layers must be one or more stages of at least one block, got {self.layers}")
        if self.width_factor < 1 or self.root_width < 32 or self.root_width % 32:
            raise ValueError(  # every GroupNorm has 32 groups, the narrowest norm root_width channels
                f"width_factor >= 1 and root_width a multiple of 32, got {self.width_factor}, {self.root_width}"
            )
        if self.num_classes < 0 or self.in_chans < 1:
            raise ValueError(f"num_classes >= 0 and in_chans >= 1, got {self.num_classes}, {self.in_chans}")

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled features)."""
        return self.root_width * 4 * self.width_factor * 2 ** (len(self.layers) - 1)


class StdConv2d(nn.Conv2d):
    """A convolution whose filters are standardised (zero mean, unit variance over each filter's
    inputs) before use, with PyTorch's symmetric padding ((stride - 1 + kernel - 1) // 2)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int = 1, eps: float = 1e-8) -> None:
        super().__init__(
            in_chans, out_chans, kernel_size, stride, padding=(stride - 1 + kernel_size - 1) // 2, bias=False
        )
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=self.eps
        ).reshape_as(self.weight)
        return F.conv2d(x, weight, None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (32 groups) followed by ReLU: the pre-activation of a v2 block."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class Downsample(nn.Module):
    """The shortcut when a block changes shape: a 1×1 weight-standardised convolution."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv = StdConv2d(in_chans, out_chans, 1, stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class PreActBottleneck(nn.Module):
    """norm-ReLU → 1×1 → norm-ReLU → 3×3 (carrying the stride) → norm-ReLU → 1×1, added to the
    input (or to its projection, taken from the pre-activated input)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        middle = out_chans // 4
        changes_shape = stride != 1 or in_chans != out_chans
        self.downsample = Downsample(in_chans, out_chans, stride) if changes_shape else None
        self.norm1, self.conv1 = GroupNormAct(in_chans), StdConv2d(in_chans, middle, 1)
        self.norm2, self.conv2 = GroupNormAct(middle), StdConv2d(middle, middle, 3, stride)
        self.norm3, self.conv3 = GroupNormAct(middle), StdConv2d(middle, out_chans, 1)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(activated)
        x = self.conv1(activated)
        x = self.conv2(self.norm2(x))
        return self.conv3(self.norm3(x)) + shortcut


class ResNetStage(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                PreActBottleneck(in_chans if i == 0 else out_chans, out_chans, stride if i == 0 else 1)
                for i in range(depth)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pooling, then a 1×1 convolution to the classes (BiT's head)."""

    def __init__(self, features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(features, num_classes, 1) if num_classes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


class ResNetV2(nn.Module):
    """BiT's ResNet-v2 classifier: images ``(B, C, H, W)`` → logits ``(B, num_classes)`` (pooled
    features ``(B, num_features)`` when ``num_classes`` is 0), for any input size."""

    def __init__(self, config: ResNetV2Config) -> None:
        super().__init__()
        self.config = config
        root = config.root_width * config.width_factor
        self.stem = nn.Sequential()
        self.stem.add_module("conv", StdConv2d(config.in_chans, root, 7, 2))
        self.stem.add_module("pad", nn.ConstantPad2d(1, 0.0))  # BiT's fixed stand-in for TF's "SAME"
        self.stem.add_module("pool", nn.MaxPool2d(3, 2))
        stages, channels = [], root
        for index, depth in enumerate(config.layers):
            out_chans = root * 4 * 2**index
            stages.append(ResNetStage(channels, out_chans, depth, stride=1 if index == 0 else 2))
            channels = out_chans
        self.stages = nn.Sequential(*stages)
        self.norm = GroupNormAct(channels)
        self.head = ClassifierHead(channels, config.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-normal convolutions, norms at identity, and, as BiT starts, each residual branch's
        last convolution and the classifier at zero (every block begins as the identity)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, PreActBottleneck):
                nn.init.zeros_(module.conv3.weight)
        if isinstance(self.head.fc, nn.Conv2d):
            nn.init.zeros_(self.head.fc.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map ``(B, num_features, h, w)`` (4 × 2^(stages - 1) times smaller than
        the input: 1/32 for BiT's four stages), normalised and activated."""
        return self.norm(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))
