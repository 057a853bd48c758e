"""Self-supervised pre-training objectives that wrap a :class:`~vitkit.models.VisionTransformer`.

- :class:`MaskedPatchPrediction` — the paper's masked patch prediction (§4.6, App. B.1.2);
- :class:`MaskedAutoencoder` — masked autoencoders (He et al. 2021).

Each is an ``nn.Module`` whose ``forward(images)`` returns a :class:`PretrainOutput` (the loss
to minimise and metrics to report); ``.encoder`` is the ViT that fine-tuning starts from.
"""

from .mae import MaskedAutoencoder, patchify
from .masking import PretrainOutput, mpp_corruption, random_token_subset
from .mpp import MaskedPatchPrediction, patch_color_classes

OBJECTIVES = ("mpp", "mae")

__all__ = [
    "OBJECTIVES",
    "MaskedAutoencoder",
    "MaskedPatchPrediction",
    "PretrainOutput",
    "mpp_corruption",
    "patch_color_classes",
    "patchify",
    "random_token_subset",
]
