"""Segmentation scores as mmsegmentation defines them: per-class intersections and unions summed
over the whole set (not averaged per image), ignored pixels counted nowhere, and a class that is
neither predicted nor present anywhere left out of the means."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..data.masks import IGNORE_INDEX


@dataclass
class SegmentationScores:
    """Running sums over a set: ``add`` each batch, then read the metrics. ``confusion[t, p]``
    counts the pixels of true class ``t`` predicted as ``p``."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    confusion: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def add(self, predicted: Tensor, truth: Tensor) -> None:
        """Count a batch: predicted classes and true classes, both ``(B, H, W)`` integers."""
        kept = truth != self.ignore_index
        pairs = truth[kept].long() * self.num_classes + predicted[kept].long()
        counts = torch.bincount(pairs.cpu(), minlength=self.num_classes**2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

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

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        """The metrics as JSON data, per class by name (absent classes as null)."""

        def finite(values: list[float]) -> dict[str, float | None]:
            return {name: None if math.isnan(v) else v for name, v in zip(class_names, values, strict=True)}

        return {
            "mean_iou": self.mean_iou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "per_class_iou": finite(self.per_class_iou),
            "per_class_accuracy": finite(self.per_class_accuracy),
        }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
