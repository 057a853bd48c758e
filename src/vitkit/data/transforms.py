"""Preprocessing with torchvision.transforms.v2, scaled to [-1, 1] as the original ViT."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

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


def to_model_input(in_chans: int) -> v2.Compose:
    """Any image (PIL, ndarray HWC, uint8 or float tensor) → float tensor in [-1, 1]."""
    return v2.Compose(
        [
            v2.ToImage(),
            ToChannels(in_chans),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([MEAN] * in_chans, [STD] * in_chans),
        ]
    )


def eval_transform(img_size: int | tuple[int, int], in_chans: int = 3, crop_fraction: float = 1.0) -> v2.Compose:
    """Resize the short side to ``img_size / crop_fraction``, centre-crop ``img_size``, scale to [-1, 1]."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    resize = [round(s / crop_fraction) for s in size]
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(min(resize), antialias=True),
            v2.CenterCrop(size),
            to_model_input(in_chans),
        ]
    )


def train_transform(
    img_size: int | tuple[int, int],
    in_chans: int = 3,
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    randaugment: int | None = None,
) -> v2.Compose:
    """The training pipeline: random-resized ("inception") crop, optional horizontal flip and
    RandAugment (magnitude 0–30), then scaling to [-1, 1]."""
    steps: list = [
        v2.ToImage(),
        ToChannels(in_chans),
        v2.RandomResizedCrop(img_size, scale=crop_scale, ratio=crop_ratio, antialias=True),
    ]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if randaugment is not None:
        steps.append(v2.RandAugment(magnitude=randaugment))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([MEAN] * in_chans, [STD] * in_chans)]
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
