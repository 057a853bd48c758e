"""Why a model answered: per-image explanations drawn over the exact pixels the model saw.

Each explanation is a map over the patch grid, upsampled to the input and coloured; an overlay
blends it with the input. Used by ``vitkit serve`` and available from Python.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.transforms import Preprocessing
from ..models import VisionTransformer
from .compute import attention_maps, attention_rollout

EXPLANATIONS = ("none", "rollout")


def rollout_map(model: VisionTransformer, image: Tensor) -> Tensor:
    """Attention rollout (paper Fig. 6) for one preprocessed image ``(C, H, W)``: ``(rows, cols)``
    scaled to [0, 1]."""
    config = model.config
    grid = (image.shape[-2] // config.stride, image.shape[-1] // config.stride)
    maps = attention_maps(model, image.unsqueeze(0))
    rollout = attention_rollout(maps, num_prefix_tokens=config.num_prefix_tokens, grid=grid, pool=config.pool)[0]
    rollout = rollout - rollout.min()
    return rollout / rollout.max().clamp_min(1e-12)


def input_picture(image: Tensor, preprocessing: Preprocessing) -> Image.Image:
    """The model's input ``(C, H, W)`` back in 8-bit RGB: what the model saw, after resize and crop."""
    mean = torch.tensor(preprocessing.mean).view(-1, 1, 1)
    std = torch.tensor(preprocessing.std).view(-1, 1, 1)
    pixels = (image.float().cpu() * std + mean).clamp(0, 1).expand(3, -1, -1)
    return Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def heatmap(values: Tensor, size: tuple[int, int]) -> Image.Image:
    """A ``(rows, cols)`` map in [0, 1] as an RGBA picture of ``size`` (height, width): inferno
    colours, more opaque where the map is higher, smooth (bicubic) between patch centres."""
    small = Image.fromarray((values.float().cpu().numpy() * 255).round().astype(np.uint8))
    level = np.asarray(small.resize((size[1], size[0]), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    rgba = matplotlib.colormaps["inferno"](level)
    rgba[..., 3] = 0.35 + 0.65 * level
    return Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA")


def overlay(picture: Image.Image, heat: Image.Image, opacity: float = 0.6) -> Image.Image:
    """``heat`` blended over ``picture`` at ``opacity`` (0: the picture alone, 1: the heat map)."""
    faded = heat.copy()
    faded.putalpha(Image.fromarray((np.asarray(heat.getchannel("A"), dtype=np.float32) * opacity).astype(np.uint8)))
    return Image.alpha_composite(picture.convert("RGBA"), faded).convert("RGB")
