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
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from .config import NetworkConfig, to_pair, type_errors
from .vit import refuse_oversized

#: the most bottlenecks a config may ask for (BiT's deepest, R152, has 50): its module tree is
#: built before its size can be checked
MAX_BLOCKS = 1000


@dataclass(frozen=True)
class ResNetV2Config(NetworkConfig):
    """Everything that defines a BiT ResNet-v2; ``ResNetV2(config)`` builds it. ``layers``
    bottlenecks per stage, ``width_factor`` × the standard widths (64 at the root; 256, 512, 1024,
    2048 out of the stages); ``img_size`` is the resolution it is trained and evaluated at
    (convolutions take any size, so only the preprocessing reads it)."""

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_factor: int = 1
    #: channels of the root convolution at width factor 1 (64 in BiT; 32 for the CPU-sized variants)
    root_width: int = 64
    img_size: tuple[int, int] = (224, 224)
    in_chans: int = 3
    num_classes: int = 1000
    #: dropout on the pooled features, before the classifier
    dropout: float = 0.0
    #: stochastic depth of the last block's residual branch; block i of n gets drop_path * i / (n - 1)
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", to_pair(self.img_size))
        object.__setattr__(self, "layers", tuple(self.layers))
        wrong = type_errors(self)
        if wrong:
            raise ValueError(f"ResNetV2Config: {wrong[0]}")
        if not self.layers or min(self.layers) < 1 or sum(self.layers) > MAX_BLOCKS:
            raise ValueError(
                f"layers must be one or more stages of at least one block, at most {MAX_BLOCKS} in all, "
                f"got {self.layers}"
            )
        if self.width_factor < 1 or self.root_width < 32 or self.root_width % 32:
            raise ValueError(  # every GroupNorm has 32 groups, the narrowest norm root_width channels
                f"width_factor >= 1 and root_width a multiple of 32, got {self.width_factor}, {self.root_width}"
            )
        if self.num_classes < 0 or self.in_chans < 1 or min(self.img_size) < 1:
            raise ValueError(
                f"num_classes >= 0, in_chans >= 1 and a positive img_size, got {self.num_classes}, "
                f"{self.in_chans}, {self.img_size}"
            )
        for name in ("dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")

    @property
    def num_features(self) -> int:
        """Channels of the last stage (the pooled features)."""
        return self.root_width * 4 * self.width_factor * 2 ** (len(self.layers) - 1)

    @property
    def stride(self) -> int:
        """The multiple of pixels an image side must be: 1, as convolutions take any size."""
        return 1

    def describe(self) -> str:
        """The architecture in words, e.g. ``BiT ResNet-v2, stages 3+4+6+3 of bottlenecks, width ×1
        (2048 features) at 224 px``."""
        width = f"width ×{self.width_factor}" if self.root_width == 64 else f"root width {self.root_width}"
        return (
            f"BiT ResNet-v2, stages {'+'.join(map(str, self.layers))} of bottlenecks, {width} "
            f"({self.num_features} features) at {self.img_size[0]} px"
        )


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
    input (or to its projection, taken from the pre-activated input); the branch is dropped for
    whole images with probability ``drop_path`` while training (stochastic depth)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, drop_path: float = 0.0) -> None:
        super().__init__()
        middle = out_chans // 4
        changes_shape = stride != 1 or in_chans != out_chans
        self.downsample = Downsample(in_chans, out_chans, stride) if changes_shape else None
        self.norm1, self.conv1 = GroupNormAct(in_chans), StdConv2d(in_chans, middle, 1)
        self.norm2, self.conv2 = GroupNormAct(middle), StdConv2d(middle, middle, 3, stride)
        self.norm3, self.conv3 = GroupNormAct(middle), StdConv2d(middle, out_chans, 1)
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        activated = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(activated)
        x = self.conv1(activated)
        x = self.conv2(self.norm2(x))
        return self.drop_path(self.conv3(self.norm3(x))) + shortcut


class ResNetStage(nn.Module):
    def __init__(self, in_chans: int, out_chans: int, stride: int, drop_paths: list[float]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                PreActBottleneck(in_chans if i == 0 else out_chans, out_chans, stride if i == 0 else 1, rate)
                for i, rate in enumerate(drop_paths)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


class ClassifierHead(nn.Module):
    """Global average pooling, dropout, then a 1×1 convolution to the classes (BiT's head)."""

    def __init__(self, features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Conv2d(features, num_classes, 1) if num_classes else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = self.drop(x.mean(dim=(2, 3), keepdim=True))
        return (pooled if pre_logits else self.fc(pooled)).flatten(1)


class ResNetV2(nn.Module):
    """BiT's ResNet-v2 classifier: images ``(B, C, H, W)`` → logits ``(B, num_classes)`` (pooled
    features ``(B, num_features)`` when ``num_classes`` is 0), for any input size. It has timm's
    model interface (``forward_features``, ``forward_head``, ``reset_classifier``) and the parts
    of vitkit's that apply to a CNN (``set_image_size``, ``set_grad_checkpointing``)."""

    def __init__(self, config: ResNetV2Config, *, max_params: int | None = None) -> None:
        """``max_params``: refuse a config whose model holds more numbers than this (default
        :data:`~vitkit.models.vit.MAX_PARAMS`, or ``VITKIT_MAX_PARAMS``), before anything is allocated."""
        super().__init__()
        if torch.get_default_device().type != "meta":  # on meta nothing is allocated (and the check builds there)
            with torch.device("meta"):
                shell = ResNetV2(config)
            held = sum(t.numel() for t in (*shell.parameters(), *shell.buffers()))
            refuse_oversized(f"a {config.describe()}", held, shell, max_params)
        self.config = config
        self.grad_checkpointing = False
        root = config.root_width * config.width_factor
        self.stem = nn.Sequential()
        self.stem.add_module("conv", StdConv2d(config.in_chans, root, 7, 2))
        self.stem.add_module("pad", nn.ConstantPad2d(1, 0.0))  # BiT's fixed stand-in for TF's "SAME"
        self.stem.add_module("pool", nn.MaxPool2d(3, 2))
        blocks = sum(config.layers)
        rates = [config.drop_path * i / max(blocks - 1, 1) for i in range(blocks)]
        stages, channels = [], root
        for index, depth in enumerate(config.layers):
            out_chans = root * 4 * 2**index
            first = sum(config.layers[:index])
            stages.append(ResNetStage(channels, out_chans, 1 if index == 0 else 2, rates[first : first + depth]))
            channels = out_chans
        self.stages = nn.Sequential(*stages)
        self.norm = GroupNormAct(channels)
        self.head = ClassifierHead(channels, config.num_classes, config.dropout)
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
        self._zero_classifier()

    def _zero_classifier(self) -> None:
        if isinstance(self.head.fc, nn.Conv2d):
            nn.init.zeros_(self.head.fc.weight)
            nn.init.zeros_(self.head.fc.bias)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a zero-initialised one for ``num_classes`` (BiT's fine-tuning
        head); 0 leaves none (the model returns pooled features)."""
        like = next(self.parameters())
        head = ClassifierHead(self.config.num_features, num_classes, self.config.dropout)
        self.head = head.to(device=like.device, dtype=like.dtype).train(self.training)
        self._zero_classifier()
        self.config = self.config.replace(num_classes=num_classes)

    def set_image_size(self, img_size: int | tuple[int, int]) -> None:
        """Record the resolution the model is used at (the weights fit any size)."""
        self.config = self.config.replace(img_size=to_pair(img_size))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing while training: keep only each stage's input and recompute
        the rest during the backward pass (less memory, about one more forward pass of time)."""
        self.grad_checkpointing = enabled

    def forward_features(self, x: Tensor) -> Tensor:
        """The final feature map ``(B, num_features, h, w)`` (4 × 2^(stages - 1) times smaller than
        the input: 1/32 for BiT's four stages), normalised and activated."""
        x = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return self.norm(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """The feature map → logits ``(B, num_classes)``, or with ``pre_logits`` the pooled
        features ``(B, num_features)`` the classifier would see."""
        return self.head(features, pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))
