"""A segmenter's answer for an image of any size: a class per pixel at the image's own size, the
area of each class, and the mask as a palette PNG and as an overlay on the image.

The image is resized so that its short side is the training size (or ``short_side``; its aspect
kept), the model runs on it whole, or, when the long side is larger than that, on overlapping windows of the
training size whose logits are averaged (mmsegmentation's "slide" mode); the logits are then
resized to the image's own size, class by class so that a large photo never needs all classes'
full-size logits at once.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import cores
from .data.images import DEFAULT_MAX_PIXELS, load_image
from .data.masks import default_colours, mask_overlay, palette_png
from .device import autocast, device_of
from .fileio import atomic_write
from .interop.sources import LoadedModel
from .models.segmenter import sliding_window_logits

#: windows overlap by a third of the training size, so every pixel is seen with context around it
WINDOW_STRIDE = 2 / 3
#: how strongly the overlay shows the classes (0: the image, 1: the mask)
OVERLAY_OPACITY = 0.5


@dataclass
class SegmentedImage:
    """One image's answer: ``mask`` ``(H, W)`` uint8 class indices at the image's own size,
    ``areas``: the share of the image each class covers (classes it covers only), and the colour of
    each class."""

    mask: np.ndarray
    areas: dict[str, float]
    colours: list[tuple[int, int, int]]
    image: Image.Image = field(repr=False)

    def mask_png(self) -> bytes:
        """The mask as a palette PNG: pixel values are class indices, the palette their colours."""
        return png_bytes(palette_png(self.mask, self.colours))

    def overlay_png(self, opacity: float = OVERLAY_OPACITY) -> bytes:
        """The image with the classes drawn over it (the background left clear)."""
        pixels = np.asarray(self.image.convert("RGB"))
        return png_bytes(Image.fromarray(mask_overlay(pixels, self.mask, self.colours, opacity)))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as a PNG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.inference_mode()
def segment_image(
    loaded: LoadedModel, image: Image.Image, *, precision: str = "fp32", short_side: int | None = None
) -> SegmentedImage:
    """The class of every pixel of ``image`` (converted to the model's channels) by the segmenter
    ``loaded``, its short side resized to ``short_side`` first (default: the training size; at
    least that); see the module docstring for how an image of any size is run."""
    if not loaded.segmenter:
        raise ValueError("this model classifies whole images; use vitkit predict (or POST /v1/predict) for it")
    model, preprocess = loaded.model, loaded.preprocess
    crop = min(preprocess.img_size)
    width, height = image.size
    scale = max(crop, short_side or crop) / min(width, height)
    resized = (max(crop, round(height * scale)), max(crop, round(width * scale)))
    inputs = dataclasses.replace(preprocess, img_size=resized, resize_shorter=None)(image)[None]
    device = device_of(model)
    cores.rebalance()
    with autocast(device, precision):
        stride = max(1, round(crop * WINDOW_STRIDE))
        logits = sliding_window_logits(model, inputs.to(device), crop=crop, stride=stride)
    if not torch.isfinite(logits).all():
        raise ValueError(
            "the segmenter's output for this image is not a number (NaN or infinite): its weights, or its "
            "activations on this input, overflow; no mask can be made from it"
        )
    mask = _argmax_at(logits[0].float(), height, width).cpu().numpy()
    names = loaded.class_names
    counts = np.bincount(mask.ravel(), minlength=len(names))
    areas = {name: count / mask.size for name, count in zip(names, counts.tolist(), strict=True) if count}
    colours = loaded.colours or default_colours(len(names))
    return SegmentedImage(mask, dict(sorted(areas.items(), key=lambda item: -item[1])), colours, image)


def _argmax_at(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The class (uint8) of each pixel of logits ``(K, h, w)`` bilinearly resized to
    ``(height, width)``, one class at a time: about 14 bytes a pixel, whatever K."""
    best = torch.full((height, width), -torch.inf, device=logits.device)
    classes = torch.zeros((height, width), dtype=torch.uint8, device=logits.device)
    for index, plane in enumerate(logits):
        resized = F.interpolate(plane[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        better = resized > best
        best = torch.where(better, resized, best)
        classes[better] = index
    return classes


@dataclass
class SegmentedFile:
    """:func:`segment_files`' record of one file: where its mask and overlay PNGs went, and the
    classes' areas; or why it could not be read."""

    path: str
    mask: str | None = None
    overlay: str | None = None
    areas: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def segment_files(
    loaded: LoadedModel,
    paths: list[Path],
    out: Path,
    *,
    precision: str = "fp32",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    short_side: int | None = None,
) -> list[SegmentedFile]:
    """Segment each image file and write ``out/<stem>.mask.png`` (palette PNG of class indices,
    at the image's own size) and ``out/<stem>.overlay.png`` (files of the same stem are numbered
    apart); unreadable files, and those over ``max_pixels``, get an ``error``. ``short_side``: see
    :func:`segment_image`."""
    out.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for path in paths:
        result = SegmentedFile(str(path))
        results.append(result)
        try:
            image = load_image(path, loaded.config.in_chans, max_pixels=max_pixels)
        except OSError as error:
            result.error = str(error)
            continue
        answer = segment_image(loaded, image, precision=precision, short_side=short_side)
        stem = _unused_stem(path.stem, used)
        for kind, data in (("mask", answer.mask_png()), ("overlay", answer.overlay_png())):
            target = out / f"{stem}.{kind}.png"
            atomic_write(target, lambda tmp, data=data: tmp.write_bytes(data))
            setattr(result, kind, str(target))
        result.areas = answer.areas
    return results


def _unused_stem(stem: str, used: set[str]) -> str:
    name, number = stem, 1
    while name in used:
        number += 1
        name = f"{stem}-{number}"
    used.add(name)
    return name
