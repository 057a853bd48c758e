"""A segmentation set from real images that ship offline: MNIST digits placed on a larger canvas,
each pixel labelled with the digit it belongs to (0 background, 1–10 the digits 0–9).

A digit's region is its stroke pixels, dilated: a region a few pixels wide, not a 1-px stroke, so
that a ViT can learn it at patch resolution. Digits never overlap (their regions are kept apart),
so every labelled pixel has one answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...seeds import seed_for

#: a canvas's classes: index 0 is the background, index d + 1 the digit d
CANVAS_CLASSES = ("background", *(str(digit) for digit in range(10)))
#: stroke pixels are those at least this bright (of 255)
_STROKE = 64
#: tries to place a digit where it touches no other before the canvas keeps fewer digits
_PLACEMENT_TRIES = 20


@dataclass(frozen=True)
class Canvases:
    """Images ``(N, 1, S, S)`` uint8 and their masks ``(N, S, S)`` uint8 of class indices."""

    images: Tensor
    masks: Tensor


def digit_regions(digits: Tensor, dilation: int = 1) -> Tensor:
    """Digits ``(N, 1, 28, 28)`` uint8 → their regions ``(N, 28, 28)`` bool: the stroke pixels,
    grown by ``dilation`` pixels in every direction."""
    strokes = (digits >= _STROKE).float()
    grown = F.max_pool2d(strokes, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return grown[:, 0] > 0


def digit_canvases(
    digits: Tensor,
    labels: Tensor,
    count: int,
    *,
    size: int = 64,
    per_canvas: tuple[int, int] = (1, 3),
    dilation: int = 1,
    seed: int = 0,
) -> Canvases:
    """``count`` canvases of ``size``² pixels, each with ``per_canvas`` (low, high) digits drawn
    from ``digits`` ``(N, 1, 28, 28)`` / ``labels`` ``(N,)`` at random places where their regions
    do not touch (a digit that finds no such place is left out). The same seed gives the same set."""
    height, width = digits.shape[-2:]
    if size < max(height, width):
        raise ValueError(
            f"a canvas of {size} px cannot hold a {height}×{width} digit; use size >= {max(height, width)}"
        )
    regions = digit_regions(digits, dilation)
    draw = random.Random(seed_for(seed, count, size))
    images = torch.zeros(count, 1, size, size, dtype=torch.uint8)
    masks = torch.zeros(count, size, size, dtype=torch.uint8)
    for index in range(count):
        for _ in range(draw.randint(*per_canvas)):
            digit = draw.randrange(len(digits))
            for _ in range(_PLACEMENT_TRIES):
                top, left = draw.randint(0, size - height), draw.randint(0, size - width)
                window = masks[index, top : top + height, left : left + width]
                if not (window[regions[digit]] > 0).any():
                    window[regions[digit]] = int(labels[digit]) + 1
                    pixels = images[index, :, top : top + height, left : left + width]
                    torch.maximum(pixels, digits[digit] * regions[digit], out=pixels)  # no faint pixel outside
                    break
    return Canvases(images, masks)
