"""Training and scoring a segmenter: the loss (cross-entropy with ignored pixels, optionally plus
Dice), and the scores (of a training run's module, or of a loaded segmenter on a set, each image
answered at its own size) as mmsegmentation defines them: per-class intersections and unions summed
over the whole set (not averaged per image), ignored pixels counted nowhere, and a class that is
neither predicted nor present anywhere left out of the means."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import to_pil_image

from ..data.load import load_data
from ..data.masks import IGNORE_INDEX
from ..device import autocast
from ..interop.sources import LoadedModel
from ..segment import segment_image


def segmentation_loss(logits: Tensor, masks: Tensor, *, ignore_index: int = IGNORE_INDEX, dice: float = 0.0) -> Tensor:
    """Cross-entropy of logits ``(B, K, H, W)`` against masks ``(B, H, W)`` over the pixels not
    ignored, plus ``dice`` × the soft Dice loss (1 − the mean over classes of 2|P∩Y| / (|P| + |Y|),
    from the softmax, summed over the batch), which weighs small classes as much as large ones."""
    # summed, then divided by at least one pixel: a batch with every pixel ignored (a crop of an
    # unlabelled border) gives 0, not the NaN of an empty mean, which would stop the run
    summed = F.cross_entropy(logits.float(), masks.long(), ignore_index=ignore_index, reduction="sum")
    loss = summed / (masks != ignore_index).sum().clamp(min=1)
    if dice:
        kept = (masks != ignore_index).unsqueeze(1)
        probabilities = logits.float().softmax(dim=1) * kept
        truth = F.one_hot(masks.long().masked_fill(~kept[:, 0], 0), logits.shape[1]).permute(0, 3, 1, 2) * kept
        overlap = (probabilities * truth).sum(dim=(0, 2, 3))
        sizes = probabilities.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3))
        loss = loss + dice * (1 - (2 * overlap / sizes.clamp(min=1e-6)).mean())
    return loss


@dataclass
class SegmentationScores:
    """Running sums over a set: ``add`` each batch, then read the metrics. ``confusion[t, p]``
    counts the pixels of true class ``t`` predicted as ``p``."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    confusion: Tensor = field(init=False)
    #: images counted, the sum of their mean pixel losses, and the files that could not be read
    images: int = 0
    loss_sum: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def add(self, predicted: Tensor, truth: Tensor) -> None:
        """Count a batch: predicted classes and true classes, both ``(B, H, W)`` integers."""
        kept = truth != self.ignore_index
        pairs = truth[kept].long() * self.num_classes + predicted[kept].long()
        counts = torch.bincount(pairs.cpu(), minlength=self.num_classes**2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

    @classmethod
    def of_confusion(cls, confusion: Tensor) -> SegmentationScores:
        """The scores a pixel confusion matrix ``(K, K)`` (true class down) holds."""
        scores = cls(len(confusion))
        scores.confusion = confusion.to(torch.int64).cpu()
        return scores

    @property
    def loss(self) -> float:
        """The mean over images of the per-pixel cross-entropy (NaN before any image)."""
        return self.loss_sum / self.images if self.images else math.nan

    @property
    def intersection(self) -> Tensor:
        return self.confusion.diag()

    @property
    def union(self) -> Tensor:
        return self.confusion.sum(0) + self.confusion.sum(1) - self.intersection

    @property
    def per_class_iou(self) -> list[float]:
        """IoU of each class; NaN for a class neither present nor predicted."""
        return [i / u if u else math.nan for i, u in zip(self.intersection.tolist(), self.union.tolist(), strict=True)]

    @property
    def per_class_accuracy(self) -> list[float]:
        """Of each class's pixels, the share predicted as that class; NaN for an absent class."""
        areas = self.confusion.sum(1).tolist()
        return [i / a if a else math.nan for i, a in zip(self.intersection.tolist(), areas, strict=True)]

    @property
    def mean_iou(self) -> float:
        return _nanmean(self.per_class_iou)

    @property
    def mean_accuracy(self) -> float:
        return _nanmean(self.per_class_accuracy)

    @property
    def pixel_accuracy(self) -> float:
        total = int(self.confusion.sum())
        return int(self.intersection.sum()) / total if total else math.nan

    def summary(self) -> str:
        """One line: mIoU, pixel accuracy and mean class accuracy."""
        return (
            f"mIoU {100 * self.mean_iou:.2f}%  pixel accuracy {100 * self.pixel_accuracy:.2f}%  "
            f"mean class accuracy {100 * self.mean_accuracy:.2f}%"
        )

    def per_class_table(self, class_names: list[str]) -> str:
        """One line per class: its IoU and accuracy ("absent" where the set and the predictions
        have none of it)."""
        lines = [f"  {'class':>20s}  {'IoU':>7s}  {'accuracy':>8s}"]
        for name, iou, accuracy in zip(class_names, self.per_class_iou, self.per_class_accuracy, strict=True):
            iou_text, accuracy_text = ("absent" if math.isnan(v) else f"{100 * v:6.2f}%" for v in (iou, accuracy))
            lines.append(f"  {name:>20s}  {iou_text:>7s}  {accuracy_text:>8s}")
        return "\n".join(lines)

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        """The metrics as JSON data, per class by name (absent classes as null)."""

        def finite(values: list[float]) -> dict[str, float | None]:
            return {name: None if math.isnan(v) else v for name, v in zip(class_names, values, strict=True)}

        return {
            "images": self.images,
            "mean_iou": self.mean_iou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "per_class_iou": finite(self.per_class_iou),
            "per_class_accuracy": finite(self.per_class_accuracy),
        }


@torch.inference_mode()
def score_segmentation(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    device: torch.device,
    precision: str = "fp32",
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationScores:
    """Score the segmenter ``model`` over ``loader`` (batches of ``(images, masks, broken)``, masks
    at the images' size), every pixel not ignored counted once."""
    was_training = model.training
    model.eval()
    scores = SegmentationScores(num_classes, ignore_index)
    for images, masks, broken in loader:
        scores.skipped += broken
        if images is None:
            continue
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True).long()
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        per_image = F.cross_entropy(logits, masks, ignore_index=ignore_index, reduction="none").flatten(1)
        kept = (masks != ignore_index).flatten(1).sum(1).clamp(min=1)
        scores.loss_sum += float((per_image.sum(1) / kept).sum())
        scores.add(logits.argmax(dim=1), masks)
        scores.images += len(images)
    model.train(was_training)
    if scores.images == 0:
        raise ValueError("no readable image to evaluate on")
    return scores


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


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
    in_chans = loaded.config.in_chans
    held_out = {"val_fraction": val_fraction, "seed": seed, "ignore_index": ignore_index}
    data = load_data(data_spec, in_chans=in_chans, task="segmentation", **held_out)
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
