"""Semantic segmentation on a ViT (Segmenter, Strudel et al., ICCV 2021): the patch tokens of any
vitkit ViT decoded to class logits per pixel.

Two decoders, as in the paper:

- ``linear``: a point-wise linear layer maps each patch token to K class logits;
- ``mask``: the *mask transformer*. K learnable class embeddings go through a few transformer
  blocks together with the (projected) patch tokens; each class's mask is the scalar product of
  the L2-normalised patch and class embeddings, normalised over classes (LayerNorm).

Either way the patch logits ``(B, K, rows, cols)`` are bilinearly upsampled to the input size.
The backbone pads inputs to a multiple of its stride and resamples its position embeddings to
the input's grid, so any input size works.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .vit import Block, VisionTransformer

#: the decoders a :class:`Segmenter` may have
DECODERS = ("linear", "mask")


class LinearDecoder(nn.Module):
    """Patch tokens ``(B, N, D)`` → patch logits ``(B, N, K)`` by one linear layer."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, patches: Tensor) -> Tensor:
        return self.head(patches)


class MaskTransformer(nn.Module):
    """Patch tokens ``(B, N, D)`` → patch logits ``(B, N, K)``: K class embeddings decoded jointly
    with the patches by ``depth`` blocks of the backbone's kind (width ``dim``), masks from the
    normalised scalar products of the two."""

    def __init__(
        self, backbone: VisionTransformer, num_classes: int, *, depth: int = 2, dim: int | None = None
    ) -> None:
        super().__init__()
        config = backbone.config
        dim = dim or config.embed_dim
        heads = max(1, dim // 64)  # 64 channels per head, as ViT's own sizes have
        block_config = config.replace(embed_dim=dim, num_heads=heads, mlp_dim=4 * dim, dropout=0.0, attn_dropout=0.0)
        self.num_classes = num_classes
        self.project_patches = nn.Linear(config.embed_dim, dim)
        self.class_embed = nn.Parameter(torch.zeros(1, num_classes, dim))
        self.blocks = nn.ModuleList([Block(block_config) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.patch_out = nn.Linear(dim, dim, bias=False)
        self.class_out = nn.Linear(dim, dim, bias=False)
        self.mask_norm = nn.LayerNorm(num_classes, eps=config.norm_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.project_patches.weight)
        nn.init.zeros_(self.project_patches.bias)
        nn.init.trunc_normal_(self.class_embed, std=0.02)
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        self.mask_norm.reset_parameters()
        for layer in (self.patch_out, self.class_out):  # the paper's scaled random projections
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)

    def no_weight_decay(self) -> set[str]:
        """The class embeddings are tokens: no weight decay, as for the ViT's class token."""
        return {"class_embed"}

    def forward(self, patches: Tensor) -> Tensor:
        x = torch.cat([self.project_patches(patches), self.class_embed.expand(patches.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        patch_features = F.normalize(self.patch_out(x[:, : -self.num_classes]), dim=-1)
        class_features = F.normalize(self.class_out(x[:, -self.num_classes :]), dim=-1)
        return self.mask_norm(patch_features @ class_features.transpose(1, 2))


class Segmenter(nn.Module):
    """A ViT backbone and a decoder: images ``(B, C, H, W)`` → logits ``(B, K, H, W)`` for any
    ``H, W``. ``decoder`` is ``"linear"`` or ``"mask"`` (see the module docstring); the mask
    transformer has ``decoder_depth`` blocks of width ``decoder_dim`` (default: the backbone's).
    The backbone is changed in place: its classifier goes, and it accepts any input size."""

    def __init__(
        self,
        backbone: VisionTransformer,
        num_classes: int,
        *,
        decoder: str = "linear",
        decoder_depth: int = 2,
        decoder_dim: int | None = None,
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        if num_classes < 2:
            raise ValueError(f"a segmenter needs at least 2 classes (background and one more), got {num_classes}")
        if decoder == "mask" and num_classes == 2:
            # LayerNorm over two values is ±1 whatever they are: no gradient reaches the decoder
            raise ValueError("the mask decoder's mask norm gives no gradient for 2 classes; use decoder='linear'")
        backbone.reset_classifier(0)  # the decoder classifies; the backbone gives tokens
        # any input size: pad to the stride, resample the position embeddings to the grid
        backbone.config = backbone.config.replace(dynamic_img_size=True, dynamic_img_pad=True)
        self.backbone = backbone
        self.num_classes = num_classes
        self._settings = {"decoder": decoder, "decoder_depth": decoder_depth, "decoder_dim": decoder_dim}
        if decoder == "linear":
            self.decoder: nn.Module = LinearDecoder(backbone.config.embed_dim, num_classes)
        else:
            self.decoder = MaskTransformer(backbone, num_classes, depth=decoder_depth, dim=decoder_dim)

    @property
    def decoder_config(self) -> dict[str, Any]:
        """The arguments that build this segmenter's decoder again:
        ``Segmenter(backbone, **segmenter.decoder_config)``."""
        return {"num_classes": self.num_classes, **self._settings}

    def patch_logits(self, images: Tensor) -> Tensor:
        """Class logits per patch ``(B, K, rows, cols)`` (the input padded to the stride)."""
        stride = self.backbone.config.stride
        rows, cols = math.ceil(images.shape[-2] / stride), math.ceil(images.shape[-1] / stride)
        tokens = self.backbone.forward_features(images)[:, self.backbone.config.num_prefix_tokens :]
        logits = self.decoder(tokens)
        return logits.transpose(1, 2).reshape(images.shape[0], self.num_classes, rows, cols)

    def forward(self, images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        logits = self.patch_logits(images)
        stride = self.backbone.config.stride
        padded = (logits.shape[-2] * stride, logits.shape[-1] * stride)
        return F.interpolate(logits, size=padded, mode="bilinear", align_corners=False)[..., :height, :width]


def sliding_window_logits(model: nn.Module, images: Tensor, *, crop: int, stride: int) -> Tensor:
    """Logits ``(B, K, H, W)`` of images larger than the training crop, as mmsegmentation's "slide"
    mode computes them: ``model`` runs on ``crop``² windows every ``stride`` pixels (the last
    window of a row or column moved back to end at the edge), and overlapping logits are averaged.
    An image no larger than ``crop`` is one window."""
    if not 0 < stride <= crop:
        raise ValueError(f"the window stride must be in 1..crop ({crop}), got {stride}")
    height, width = images.shape[-2:]
    rows = max(math.ceil((height - crop) / stride), 0) + 1
    cols = max(math.ceil((width - crop) / stride), 0) + 1
    summed: Tensor | None = None
    counts = images.new_zeros(1, 1, height, width)
    for row in range(rows):
        for col in range(cols):
            bottom, right = min(row * stride + crop, height), min(col * stride + crop, width)
            top, left = max(bottom - crop, 0), max(right - crop, 0)
            logits = model(images[..., top:bottom, left:right])
            if summed is None:
                summed = images.new_zeros(images.shape[0], logits.shape[1], height, width)
            summed[..., top:bottom, left:right] += logits
            counts[..., top:bottom, left:right] += 1
    assert summed is not None  # at least one window
    return summed / counts
