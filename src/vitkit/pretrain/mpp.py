"""Masked patch prediction, the paper's self-supervised objective (§4.6, App. B.1.2).

Half of the patch embeddings are corrupted — 80 % of those replaced by a learned [mask]
embedding, 10 % by a random other patch's embedding, 10 % left as they are — and a linear head
on each corrupted patch's output token predicts the patch's mean colour, quantised to
``color_bits`` bits per channel: 3 bits × 3 channels = the paper's 512 classes. For gray images
the same 3 bits give 8 gray levels (the paper's quantisation per channel, on one channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.transforms import MEAN, STD
from ..models import VisionTransformer
from .masking import MASKED, RANDOM, UNTOUCHED, PretrainOutput, mpp_corruption


def patch_color_classes(images: Tensor, stride: int, bits: int = 3) -> Tensor:
    """The target of each patch: its mean colour, each channel quantised to ``bits`` bits.

    ``images`` are model inputs ``(B, C, H, W)`` scaled to [-1, 1]; returns class indices
    ``(B, N)`` in raster order, in ``[0, 2^(bits·C))``, the first channel most significant.
    """
    levels = 2**bits
    mean = F.avg_pool2d(images.float() * STD + MEAN, stride).clamp(0.0, 1.0)  # (B, C, rows, cols) in [0, 1]
    bins = (mean * levels).floor().clamp(max=levels - 1).long()
    weights = levels ** torch.arange(images.shape[1] - 1, -1, -1, device=images.device)
    return (bins * weights[:, None, None]).sum(dim=1).flatten(1)


class MaskedPatchPrediction(nn.Module):
    """Wraps an encoder for masked patch prediction; ``forward(images)`` gives the loss.

    Args:
        encoder: the ViT to pre-train (its classifier is not used).
        ratio: fraction of patches corrupted per image (paper: 0.5).
        color_bits: bits per channel of the predicted mean colour (paper: 3).
    """

    def __init__(self, encoder: VisionTransformer, *, ratio: float = 0.5, color_bits: int = 3) -> None:
        super().__init__()
        if not 1 <= color_bits <= 8:
            raise ValueError(f"color_bits must be 1-8 (bits per channel of the predicted colour), got {color_bits}")
        self.encoder = encoder
        self.ratio = ratio
        self.color_bits = color_bits
        dim = encoder.config.embed_dim
        self.mask_token = nn.Parameter(torch.empty(1, 1, dim).normal_(std=0.02))
        self.head = nn.Linear(dim, 2 ** (color_bits * encoder.config.in_chans))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """The [mask] token is an input embedding: weight decay would pull it towards zero."""
        return {"mask_token"}

    def forward(self, images: Tensor) -> PretrainOutput:
        encoder = self.encoder
        patches, grid = encoder.embed_patches(images)
        batch, num_patches, dim = patches.shape
        kinds = mpp_corruption(batch, num_patches, ratio=self.ratio, device=patches.device)
        masked = (kinds == MASKED).unsqueeze(-1)
        # "Another patch": any patch of any image in the batch.
        donors = torch.randint(batch * num_patches, (batch, num_patches), device=patches.device)
        swapped = patches.reshape(-1, dim)[donors]
        corrupted = torch.where(masked, self.mask_token.to(patches.dtype), patches)
        corrupted = torch.where((kinds == RANDOM).unsqueeze(-1), swapped, corrupted)
        tokens = encoder.encode(encoder.add_positions(corrupted, grid))[:, encoder.config.num_prefix_tokens :]
        chosen = kinds != UNTOUCHED
        logits = self.head(tokens[chosen]).float()
        targets = patch_color_classes(images, encoder.config.stride, self.color_bits)[chosen]
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(dim=1) == targets).float().mean()
        return PretrainOutput(loss, {"color_accuracy": accuracy})
