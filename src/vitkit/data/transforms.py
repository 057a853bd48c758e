"""Preprocessing with torchvision.transforms.v2, scaled to [-1, 1] as the original ViT."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from ..models.config import to_pair

# The original ViT scales inputs to [-1, 1]: (x - 0.5) / 0.5.
MEAN = 0.5
STD = 0.5


class ToChannels(v2.Transform):
    """Give an image tensor (C, H, W) the model's channel count: drop alpha, gray ↔ RGB."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.in_chans = in_chans

    def transform(self, inpt: torch.Tensor, params: dict) -> torch.Tensor:
        channels = inpt.shape[-3]
        if channels == self.in_chans:
            return inpt
        if channels in (2, 4):  # gray + alpha, RGB + alpha
            inpt, channels = inpt[..., : channels - 1, :, :], channels - 1
        if channels == 1 and self.in_chans == 3:
            return inpt.expand(*inpt.shape[:-3], 3, *inpt.shape[-2:])
        if channels == 3 and self.in_chans == 1:
            return v2.functional.rgb_to_grayscale(inpt)
        if channels == self.in_chans:
            return inpt
        raise ValueError(f"cannot convert a {inpt.shape[-3]}-channel image to {self.in_chans} channels")


INTERPOLATIONS = ("bilinear", "bicubic")


class ResizeCrop(v2.Transform):
    """Resize an image tensor so that it covers ``size`` (H, W), its short side at least
    ``shorter`` (when given), then keep the middle ``size``.

    The whole image is resized with torchvision's antialiased resize, as transformers' image
    processors do, so that a model written for transformers' ``pipeline`` sees exactly vitkit's
    input; the readers' header limits (:func:`vitkit.data.images.check_size`: pixels, and an
    aspect ratio of at most 20:1) bound what that takes, since the resized image is at most 20
    times the crop. Offsets are rounded down as transformers' processors do (torchvision's
    CenterCrop rounds half up: one pixel apart when a margin is odd)."""

    def __init__(self, size: tuple[int, int], shorter: int | None = None, interpolation: str = "bilinear") -> None:
        super().__init__()
        self.size, self.shorter = size, shorter
        self.interpolation = v2.InterpolationMode(interpolation)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) of the whole resized image: the side that asks for the larger scale
        gets its size exactly, the other its scaled length rounded down, as torchvision's Resize."""
        crop_height, crop_width = self.size
        by_height = max(crop_height, (self.shorter or 0) if height <= width else 0)
        by_width = max(crop_width, (self.shorter or 0) if width < height else 0)
        if by_height / height >= by_width / width:
            return by_height, max(crop_width, int(by_height * width / height))
        return max(crop_height, int(by_width * height / width)), by_width

    def crop_offsets(self, resized_height: int, resized_width: int) -> tuple[int, int]:
        """(top, left) of the crop in the resized image."""
        return (resized_height - self.size[0]) // 2, (resized_width - self.size[1]) // 2

    def transform(self, inpt: Any, params: dict) -> Any:
        height, width = v2.functional.get_size(inpt)
        resized_height, resized_width = self.resized_size(height, width)
        top, left = self.crop_offsets(resized_height, resized_width)
        resized = v2.functional.resize(inpt, [resized_height, resized_width], self.interpolation, antialias=True)
        return v2.functional.crop(resized, top, left, *self.size)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input at evaluation time; it travels with the weights
    (timm's ``pretrained_cfg``, a Hugging Face ``preprocessor_config.json``, a vitkit folder).

    Calling it transforms one image (PIL, ndarray HWC, uint8 or float tensor CHW) into a float
    tensor (C, H, W). ``resize_shorter`` set: resize the short side to it (or more, where a
    non-square ``img_size`` needs it to cover both sides), then centre-crop ``img_size`` (timm,
    vitkit; see :class:`ResizeCrop`). ``resize_shorter`` None: resize straight to ``img_size``
    ("squash", as vit_jax and transformers' ViTImageProcessor do)."""

    img_size: tuple[int, int]
    in_chans: int = 3
    resize_shorter: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (MEAN,) * 3
    std: tuple[float, ...] = (STD,) * 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", to_pair(self.img_size))
        object.__setattr__(self, "mean", _per_channel(self.mean, self.in_chans, "mean"))
        object.__setattr__(self, "std", _per_channel(self.std, self.in_chans, "std"))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
        if self.resize_shorter is not None and self.resize_shorter < min(self.img_size):
            raise ValueError(f"resize_shorter {self.resize_shorter} is smaller than the crop {self.img_size}")
        mode = v2.InterpolationMode(self.interpolation)
        if self.resize_shorter:
            resize = ResizeCrop(self.img_size, self.resize_shorter, self.interpolation)
        else:
            resize = v2.Resize(list(self.img_size), interpolation=mode, antialias=True)
        steps = [
            v2.ToImage(),  # a tensor first: resized by torchvision, as transformers' processors do
            resize,
            ToChannels(self.in_chans),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
        ]
        object.__setattr__(self, "_transform", v2.Compose(steps))

    @classmethod
    def centre_crop(
        cls, img_size: int | tuple[int, int], in_chans: int = 3, crop_fraction: float = 1.0, **kwargs: Any
    ) -> Preprocessing:
        """Resize the short side to ``floor(size / crop_fraction)`` (timm's ``crop_pct``), then
        centre-crop ``img_size``."""
        if not 0.0 < crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction is in (0, 1], got {crop_fraction}")
        shorter = min(math.floor(s / crop_fraction) for s in to_pair(img_size))
        return cls(to_pair(img_size), in_chans, resize_shorter=shorter, **kwargs)

    @property
    def min_side(self) -> int:
        """A short side with which an image still covers what the resize makes of it (see
        :func:`vitkit.data.images.load_image`, which decodes large JPEGs at a smaller scale)."""
        return max(self.resize_shorter or 0, *self.img_size)

    def __call__(self, image: Any) -> torch.Tensor:
        return self._transform(image)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {**data, "img_size": list(self.img_size), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Also reads the older vitkit form (``crop_fraction``, scalar ``mean``/``std``)."""
        data = dict(data)
        if "crop_fraction" in data:
            return cls.centre_crop(data.pop("img_size"), data.pop("in_chans", 3), data.pop("crop_fraction"), **data)
        return cls(**data)


def _per_channel(values: float | Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    """One value per channel; a single value (or 3 equal ones for a gray model) is repeated."""
    values = (float(values),) if isinstance(values, int | float) else tuple(float(v) for v in values)
    if len(set(values)) == 1:
        values = values[:1] * in_chans
    if len(values) != in_chans:
        raise ValueError(f"{what} has {len(values)} values for a {in_chans}-channel model")
    if not all(math.isfinite(v) for v in values) or (what == "std" and min(values) <= 0):
        # normalising divides by std: 0 would turn every pixel into inf or NaN
        raise ValueError(f"{what} must be finite{' and above 0' if what == 'std' else ''}, got {values}")
    return values


def eval_transform(img_size: int | tuple[int, int], in_chans: int = 3, crop_fraction: float = 1.0) -> Preprocessing:
    """vitkit's own evaluation preprocessing: short side to ``img_size / crop_fraction``,
    centre crop, scale to [-1, 1]."""
    return Preprocessing.centre_crop(img_size, in_chans, crop_fraction)


def decode_transform(img_size: int | tuple[int, int], in_chans: int) -> v2.Compose:
    """An image file → uint8 ``(in_chans, H, W)``: resized (antialiased) to cover ``img_size``,
    the middle kept (see :class:`ResizeCrop`); what batched augmentation starts from for files and
    shards."""
    return v2.Compose([v2.ToImage(), ResizeCrop(to_pair(img_size)), ToChannels(in_chans)])


def train_transform(
    img_size: int | tuple[int, int],
    in_chans: int = 3,
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    randaugment: int | None = None,
    rotate: float = 0.0,
    translate: float = 0.0,
    shear: float = 0.0,
    zoom: tuple[float, float] | None = None,
    erase: float = 0.0,
) -> v2.Compose:
    """The per-image training pipeline: random-resized ("inception") crop, optional random affine
    transform, horizontal flip and RandAugment (magnitude 0–30), scaling to [-1, 1], optional
    random erasing. :class:`vitkit.data.augment.BatchAugment` does the same to whole batches."""
    steps: list = [
        v2.ToImage(),
        ToChannels(in_chans),
        v2.RandomResizedCrop(img_size, scale=crop_scale, ratio=crop_ratio, antialias=True),
    ]
    if rotate or translate or shear or zoom:
        steps.append(v2.RandomAffine(rotate, translate=(translate, translate), scale=zoom, shear=shear))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment is not None:
        steps.append(v2.RandAugment(magnitude=randaugment))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([MEAN] * in_chans, [STD] * in_chans)]
    if erase:
        steps.append(v2.RandomErasing(p=erase, value=-1.0))  # black, after scaling to [-1, 1]
    return v2.Compose(steps)


def batch_mixing(num_classes: int, mixup: float = 0.0, cutmix: float = 0.0) -> v2.Transform | None:
    """Mixup and/or CutMix on whole batches (one of them per batch, chosen at random);
    ``mixup``/``cutmix`` are the Beta(α, α) parameters, 0 = off. Returns None when both are off."""
    choices = []
    if mixup > 0:
        choices.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        choices.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
