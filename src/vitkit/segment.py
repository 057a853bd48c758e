"""A segmenter's answer for an image of any size: a class per pixel at the image's own size, the
area of each class, and the mask as a palette PNG and as an overlay on the image; and its scores
on a segmentation set, each image answered so.

The image is resized so that its short side is the training size (its aspect kept), the model
runs on it whole, or, when the long side is larger than that, on overlapping windows of the
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
from torchvision.transforms.v2.functional import to_pil_image

from . import cores
from .data.images import DEFAULT_MAX_PIXELS, load_image
from .data.load import load_data
from .data.masks import IGNORE_INDEX, overlay, palette_png
from .device import autocast, device_of
from .fileio import atomic_write
from .interop.sources import LoadedModel
from .models.segmenter import sliding_window_logits
from .train.segmentation import SegmentationScores

#: windows overlap by a third of the training size (mmsegmentation's configs use 2/3 strides too)
WINDOW_STRIDE = 2 / 3
#: how strongly the overlay shows the classes (0: the image, 1: the mask)
OVERLAY_OPACITY = 0.5


@dataclass
class SegmentedImage:
    """One image's answer: ``mask`` ``(H, W)`` uint8 class indices at the image's own size, and
    ``areas``: the share of the image each class covers (classes it covers only)."""

    mask: np.ndarray
    areas: dict[str, float]
    image: Image.Image = field(repr=False)

    def mask_png(self, colours: list[tuple[int, int, int]]) -> bytes:
        """The mask as a palette PNG: pixel values are class indices, the palette their colours."""
        return _png(palette_png(self.mask, colours))

    def overlay_png(self, colours: list[tuple[int, int, int]], opacity: float = OVERLAY_OPACITY) -> bytes:
        """The image with the classes drawn over it (the background left clear)."""
        pixels = np.asarray(self.image.convert("RGB"))
        return _png(Image.fromarray(overlay(pixels, self.mask, colours, opacity)))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.inference_mode()
def segment_image(loaded: LoadedModel, image: Image.Image, *, precision: str = "fp32") -> SegmentedImage:
    """The class of every pixel of ``image`` (already in the model's channels) by the segmenter
    ``loaded``; see the module docstring for how an image of any size is run."""
    if not loaded.segmenter:
        raise ValueError("this model classifies whole images; use vitkit predict (or POST /v1/predict) for it")
    model, preprocess = loaded.model, loaded.preprocess
    crop = min(preprocess.img_size)
    width, height = image.size
    scale = crop / min(width, height)
    resized = (max(crop, round(height * scale)), max(crop, round(width * scale)))
    inputs = dataclasses.replace(preprocess, img_size=resized, resize_shorter=None)(image)[None]
    device = device_of(model)
    cores.rebalance()
    with autocast(device, precision):
        stride = max(1, round(crop * WINDOW_STRIDE))
        logits = sliding_window_logits(model, inputs.to(device), crop=crop, stride=stride)
    mask = _argmax_at(logits[0].float(), height, width).cpu().numpy().astype(np.uint8)
    counts = np.bincount(mask.ravel(), minlength=len(loaded.class_names))
    areas = {name: count / mask.size for name, count in zip(loaded.class_names, counts.tolist(), strict=True) if count}
    return SegmentedImage(mask, dict(sorted(areas.items(), key=lambda item: -item[1])), image)


def _argmax_at(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The class of each pixel of logits ``(K, h, w)`` bilinearly resized to ``(height, width)``,
    one class at a time (two full-size planes in memory, not K)."""
    best = torch.full((height, width), -torch.inf, device=logits.device)
    classes = torch.zeros((height, width), dtype=torch.long, device=logits.device)
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
) -> list[SegmentedFile]:
    """Segment each image file and write ``out/<stem>.mask.png`` (palette PNG of class indices,
    at the image's own size) and ``out/<stem>.overlay.png`` (files of the same stem are numbered
    apart); unreadable files, and those over ``max_pixels``, get an ``error``."""
    out.mkdir(parents=True, exist_ok=True)
    colours = loaded.colours or []
    results, used = [], set()
    for path in paths:
        result = SegmentedFile(str(path))
        results.append(result)
        try:
            image = load_image(path, loaded.model.backbone.config.in_chans, max_pixels=max_pixels)
        except OSError as error:
            result.error = str(error)
            continue
        answer = segment_image(loaded, image, precision=precision)
        stem = _unused_stem(path.stem, used)
        for kind, data in (("mask", answer.mask_png(colours)), ("overlay", answer.overlay_png(colours))):
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


def score_segmenter(
    loaded: LoadedModel,
    data_spec: str,
    *,
    split: str = "val",
    val_fraction: float = 0.1,
    seed: int = 0,
    precision: str = "fp32",
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationScores:
    """mIoU, per-class IoU, pixel and mean class accuracy of the segmenter ``loaded`` on a
    segmentation set's ``split`` ("val" or "train"; ``val_fraction`` and ``seed`` hold images out
    as :func:`~vitkit.data.load.load_data` does), each image scored at its own size against its
    own mask, run as :func:`segment_image` runs it (whole, or in sliding windows). Files that
    cannot be read are counted in ``skipped``."""
    if not loaded.segmenter:
        raise ValueError("this model classifies whole images; score it with vitkit eval on a classification set")
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    in_chans = loaded.model.backbone.config.in_chans
    data = load_data(data_spec, in_chans=in_chans, val_fraction=val_fraction, seed=seed, task="segmentation")
    if data.class_names != loaded.class_names:
        raise ValueError(
            f"the classes of {data_spec} ({', '.join(data.class_names)}) are not the segmenter's "
            f"({', '.join(loaded.class_names)}), in the same order; a mask's values are class indices"
        )
    dataset = data.val if split == "val" else data.train
    scores = SegmentationScores(len(loaded.class_names), ignore_index)
    for index in range(len(dataset)):
        try:
            image, mask = dataset[index]
        except OSError as error:
            scores.skipped.append(str(error))
            continue
        if isinstance(image, torch.Tensor):  # in-memory sets hold uint8 tensors
            image = to_pil_image(image)
        answer = segment_image(loaded, image, precision=precision)
        scores.add(torch.from_numpy(answer.mask)[None], torch.as_tensor(mask)[None])
        scores.images += 1
    if scores.images == 0:
        raise ValueError(f"no readable image to evaluate on in {data_spec}")
    return scores
