"""Augmentation of whole batches on the training device, each sample with its own random
parameters, in one vectorised pass.

torchvision's v2 transforms draw one parameter set per call, so a batch gets one crop for all of
its images, and per-sample calls cost 250–750 µs per small image on a CPU core — more than the
model's own step for the demo ViT. Here the geometry of every sample (random-resized crop,
rotation, translation, shear, horizontal flip) is one 2×3 matrix, and one ``grid_sample`` call
resamples the whole batch; colour operations and erasing are masks and blends over the batch.

Everything random is drawn from a ``torch.Generator`` the caller seeds (on the CPU, so a seed gives
the same parameters on any device): a run seeds it from (seed, epoch, position in the epoch), so a
resumed epoch augments exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..seeds import seed_for
from .transforms import MEAN, STD

#: the colour operations :class:`BatchAugment` picks from (RandAugment's set, minus geometry, which
#: the sampling matrix already covers)
COLOUR_OPS = ("identity", "brightness", "contrast", "saturation", "solarize", "posterize", "autocontrast", "invert")


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one batch: ``matrix`` ``(B, 2, 3)`` maps output to input
    coordinates (``affine_grid``'s normalised [-1, 1] convention); ``ops`` ``(B, K)`` indices into
    :data:`COLOUR_OPS` and ``signs`` ``(B, K)`` ±1, the direction of each (brighter or darker, ...);
    ``erase`` ``(B, 4)`` the erased box as (top, left, bottom, right) fractions (empty where
    nothing is erased)."""

    matrix: Tensor
    ops: Tensor
    signs: Tensor
    erase: Tensor

    def select(self, indices: Tensor) -> AugmentParams:
        """The parameters of the samples at ``indices``."""
        return AugmentParams(self.matrix[indices], self.ops[indices], self.signs[indices], self.erase[indices])

    @classmethod
    def identity(cls, batch: int, colour_ops: int = 0) -> AugmentParams:
        """Parameters that change nothing (at the input's own size)."""
        matrix = torch.eye(2, 3).expand(batch, 2, 3).clone()
        ops = torch.zeros(batch, colour_ops, dtype=torch.long)
        return cls(matrix, ops, torch.ones(batch, colour_ops), torch.zeros(batch, 4))


@dataclass(frozen=True)
class BatchAugment:
    """Random augmentation of batches of images ``(B, C, H, W)`` (uint8 in 0–255, or float in
    [0, 1]) to model inputs ``(B, C, size, size)`` scaled to [-1, 1].

    - ``crop_scale``: random-resized crop, area fraction range (None: the whole image);
      ``crop_ratio`` its aspect-ratio range (log-uniform).
    - ``rotate`` (± degrees), ``translate`` (± fraction of the size), ``shear`` (± degrees),
      ``zoom`` (content size factor range: below 1 shrinks the image inside the frame).
    - ``flip``: horizontal flip with probability 1/2.
    - ``colour_ops`` operations per image from :data:`COLOUR_OPS` at ``magnitude`` (0–30,
      RandAugment's scale); 0 ops = none. Saturation acts on RGB only.
    - ``erase``: probability of erasing one random box (2–33 % of the area, aspect 0.3–3.3) per image.

    Areas outside the source image read as black (0), as torchvision's affine transforms fill.
    """

    size: int
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotate: float = 0.0
    translate: float = 0.0
    shear: float = 0.0
    zoom: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    colour_ops: int = 0
    magnitude: float = 9.0
    erase: float = 0.0

    def sample(self, batch: int, generator: torch.Generator) -> AugmentParams:
        """Draw every sample's parameters (on the CPU, from ``generator``)."""

        def uniform(low: float, high: float, shape: tuple[int, ...] = (batch,)) -> Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

        # Output → crop coordinates: the flip, then the inverse of rotation, shear and zoom.
        flip = torch.ones(batch, dtype=torch.float64)
        if self.flip:
            flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
        angle = torch.deg2rad(uniform(-self.rotate, self.rotate))
        tan = torch.deg2rad(uniform(-self.shear, self.shear)).tan()
        cos, sin = angle.cos(), angle.sin()
        zoom = 1.0 / uniform(*self.zoom)
        # Rotation after an x-shear, over the content scale: [[cos, cos·tan − sin], [sin, sin·tan + cos]] / s.
        linear = torch.stack([torch.stack([cos, cos * tan - sin], -1), torch.stack([sin, sin * tan + cos], -1)], -2)
        linear = linear * (zoom[:, None, None] * torch.stack([flip, torch.ones_like(flip)], -1)[:, None, :])
        # Fractions of the size → normalised coordinates (the frame is 2 wide).
        shift = 2.0 * uniform(-self.translate, self.translate, (batch, 2))
        # Crop → source coordinates: the crop's half-sizes and its centre.
        half = torch.ones(batch, 2, dtype=torch.float64)
        centre = torch.zeros(batch, 2, dtype=torch.float64)
        if self.crop_scale is not None:
            area = uniform(*self.crop_scale)
            ratio = uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])).exp()
            half = torch.stack([(area * ratio).sqrt(), (area / ratio).sqrt()], -1).clamp(max=1.0)
            centre = uniform(-1.0, 1.0, (batch, 2)) * (1 - half)
        crop = torch.diag_embed(half)
        matrix = torch.cat([crop @ linear, crop @ shift[..., None] + centre[..., None]], dim=-1)
        ops = torch.randint(len(COLOUR_OPS), (batch, self.colour_ops), generator=generator)
        signs = torch.where(torch.rand(batch, self.colour_ops, generator=generator) < 0.5, -1.0, 1.0)
        return AugmentParams(matrix.float(), ops, signs, self._erase_boxes(batch, generator))

    def _erase_boxes(self, batch: int, generator: torch.Generator) -> Tensor:
        area = 0.02 + 0.31 * torch.rand(batch, generator=generator)
        log_ratio = math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(batch, generator=generator)
        height = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        width = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        top = (1 - height) * torch.rand(batch, generator=generator)
        left = (1 - width) * torch.rand(batch, generator=generator)
        erased = torch.rand(batch, generator=generator) < self.erase
        boxes = torch.stack([top, left, top + height, left + width], -1)
        return torch.where(erased[:, None], boxes, torch.zeros_like(boxes))

    def apply(self, images: Tensor, params: AugmentParams) -> Tensor:
        """Augment ``images`` with ``params``: geometry, colour, erasing, then scaling to [-1, 1]."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        matrix = params.matrix.to(x.device)
        grid = F.affine_grid(matrix, [len(x), x.shape[1], self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        for k in range(params.ops.shape[1]):
            x = _colour(x, params.ops[:, k].to(x.device), params.signs[:, k].to(x.device), self.magnitude / 30.0)
        if params.erase.any():  # the parameters live on the CPU: no wait for the device
            x = _erase(x, params.erase.to(x.device))
        return (x - MEAN) / STD

    def apply_to_masks(self, masks: Tensor, params: AugmentParams, ignore_index: int = 255) -> Tensor:
        """The geometry of ``params`` applied to segmentation masks ``(B, H, W)`` of class indices,
        as :meth:`apply` applies it to their images: the same sampling grid, read by nearest
        neighbour (a class is never blended), and ``ignore_index`` where the grid leaves the mask.
        Colour changes and erasing leave masks alone. Returns int64 ``(B, size, size)``."""
        matrix = params.matrix.to(masks.device)
        grid = F.affine_grid(matrix, [len(masks), 1, self.size, self.size], align_corners=False)
        classes = F.grid_sample(masks[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0].long()
        outside = (grid.abs() > 1).any(dim=-1)  # where grid_sample's zero padding would answer
        return classes.masked_fill(outside, ignore_index)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(images, self.sample(len(images), generator))


def _per_sample(values: Tensor) -> Tensor:
    return values[:, None, None, None]


def _colour(x: Tensor, ops: Tensor, signs: Tensor, strength: float) -> Tensor:
    """Each sample's colour operation ``ops[b]`` on ``x`` in [0, 1] (``signs[b]``: its direction,
    where it has one). Every operation is computed for the whole batch and each sample keeps its
    own: cheap at training sizes, and no per-sample loop."""
    if x.shape[1] == 3:
        gray = (x * x.new_tensor([0.299, 0.587, 0.114])[:, None, None]).sum(dim=1, keepdim=True)
    else:
        gray = x.mean(dim=1, keepdim=True)
    factor = _per_sample(1.0 + 0.9 * strength * signs.to(x.dtype))
    mean = gray.mean(dim=(2, 3), keepdim=True)
    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    levels = 2 ** max(1, round(8 - 4 * strength))  # RandAugment: 8 bits at magnitude 0, 4 at 30
    results = {
        "brightness": x * factor,
        "contrast": mean + (x - mean) * factor,
        "saturation": gray + (x - gray) * factor,
        "solarize": torch.where(x >= 1.0 - strength, 1.0 - x, x),
        "posterize": torch.floor(x * (levels - 1) + 0.5) / (levels - 1),
        "autocontrast": (x - low) / (high - low).clamp(min=1e-3),
        "invert": 1.0 - x,
    }
    out = x
    for index, name in enumerate(COLOUR_OPS[1:], start=1):
        out = torch.where(_per_sample(ops == index), results[name], out)
    return out.clamp(0.0, 1.0)


def _erase(x: Tensor, boxes: Tensor) -> Tensor:
    """Black out each sample's box (fractions of the size; an empty box erases nothing)."""
    rows = (torch.arange(x.shape[2], device=x.device) + 0.5) / x.shape[2]
    cols = (torch.arange(x.shape[3], device=x.device) + 0.5) / x.shape[3]
    inside_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 2:3])
    inside_cols = (cols >= boxes[:, 1:2]) & (cols < boxes[:, 3:4])
    inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return x.masked_fill(inside, 0.0)


def resize_uint8(images: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """uint8 images ``(N, C, H, W)`` → ``(N, C, size, size)``, antialiased, once for a whole set."""
    if images.shape[-2:] == (size, size):
        return images
    parts = [
        F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        for part in images.split(chunk)
    ]
    return torch.cat(parts).round().clamp(0, 255).to(torch.uint8)


def resize_masks(masks: Tensor, size: int) -> Tensor:
    """Masks ``(N, H, W)`` of class indices → ``(N, size, size)``, nearest neighbour (every pixel
    keeps a class), as :func:`resize_uint8` resizes their images."""
    if masks.shape[-2:] == (size, size):
        return masks
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest-exact")[:, 0].to(masks.dtype)


class AugmentedBatches:
    """An in-memory training set served as whole batches, augmented where they will be used.

    ``images`` are uint8 ``(N, C, size, size)``, already at the training size (see
    :func:`resize_uint8`). Each epoch draws the parameters of all N samples at once from (seed,
    epoch), so a sample is augmented the same way whatever the batch size, number of processes or
    resume point; a batch is then an index gather, one host-to-device copy of uint8 and one
    :meth:`BatchAugment.apply`: no per-sample Python step.
    """

    def __init__(self, images: Tensor, labels: Tensor, augment: BatchAugment, seed: int) -> None:
        if images.dtype != torch.uint8 or images.shape[-1] != augment.size or images.shape[-2] != augment.size:
            raise ValueError(f"expected uint8 images of {augment.size}×{augment.size}, got {tuple(images.shape)}")
        self.images, self.labels, self.augment, self.seed = images, labels, augment, seed
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        generator = torch.Generator().manual_seed(seed_for(self.seed, epoch, 1))
        self.params = self.augment.sample(len(self), generator)

    def batches(
        self, indices: Sequence[int], batch_size: int, device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor, list[str]]]:
        """``(images, labels, [])`` of ``indices`` in order, ``batch_size`` at a time (the last
        one may be smaller), on ``device``, as model inputs."""
        order = torch.as_tensor(indices, dtype=torch.long)
        for chunk in order.split(batch_size):
            params = self.params.select(chunk)
            images = self.images[chunk].to(device, non_blocking=True)
            labels = self.labels[chunk].to(device, non_blocking=True)
            yield self.augment.apply(images, params), self.targets(labels, params), []

    def targets(self, labels: Tensor, params: AugmentParams) -> Tensor:
        """What a batch's labels become under its augmentation: class labels stay as they are."""
        return labels


class AugmentedMaskBatches(AugmentedBatches):
    """:class:`AugmentedBatches` of a segmentation set: the labels are masks ``(N, size, size)`` of
    class indices, moved with their images (:meth:`BatchAugment.apply_to_masks`), and
    ``ignore_index`` where the augmentation leaves the image."""

    def __init__(
        self, images: Tensor, masks: Tensor, augment: BatchAugment, seed: int, ignore_index: int = 255
    ) -> None:
        if masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"masks of {tuple(masks.shape[-2:])} for images of {tuple(images.shape[-2:])}")
        super().__init__(images, masks, augment, seed)
        self.ignore_index = ignore_index

    def targets(self, labels: Tensor, params: AugmentParams) -> Tensor:
        return self.augment.apply_to_masks(labels, params, self.ignore_index)


def augment_stream(
    batches: Iterable[tuple[Tensor | None, Tensor | None, list[str]]],
    augment: BatchAugment,
    *,
    key: tuple[int, ...],
    device: torch.device,
    first: int = 0,
) -> Iterator[tuple[Tensor | None, Tensor | None, list[str]]]:
    """Augment a stream of uint8 batches (``(images, labels, broken)``, e.g. decoded by loader
    workers) on ``device``. Batch ``k`` of the stream (counting from ``first``) draws its
    parameters from ``(*key, k)``, so a stream resumed at batch ``first`` continues exactly."""
    for number, (images, labels, broken) in enumerate(batches, start=first):
        if images is None:
            yield images, labels, broken
            continue
        generator = torch.Generator().manual_seed(seed_for(*key, number))
        images = augment(images.to(device, non_blocking=True), generator)
        yield images, labels.to(device, non_blocking=True), broken
