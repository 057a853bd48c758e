"""Multi-label scores: average precision per class and its mean (mAP), and F1 at a decision
threshold chosen on held-out data.

Average precision is the area under the precision-recall step curve, as scikit-learn's
``average_precision_score`` computes it: ``Σ_k (R_k − R_{k−1}) · P_k`` over the distinct scores,
highest first (tied scores form one step). A class without a positive image has no AP; mAP skips it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..device import autocast


def average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    """AP of each class: ``scores`` and 0/1 ``targets`` of shape ``(N, classes)`` → ``(classes,)``,
    NaN for a class without a positive."""
    return torch.stack([_class_average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])


def _class_average_precision(scores: Tensor, targets: Tensor) -> Tensor:
    positives = targets.sum()
    if positives == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    order = scores.double().argsort(descending=True)
    sorted_scores, hits = scores.double()[order], targets.double()[order]
    true_positives, ranked = hits.cumsum(0), torch.arange(1, len(hits) + 1, dtype=torch.float64)
    # The last position of each run of tied scores ends a step of the curve.
    step_ends = torch.cat([sorted_scores[1:] != sorted_scores[:-1], torch.tensor([True])])
    precision = (true_positives / ranked)[step_ends]
    recall = (true_positives / positives)[step_ends]
    recall_gained = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return (recall_gained * precision).sum()


def mean_average_precision(per_class_ap: Tensor) -> float:
    """The mean of the classes' APs, classes without a positive (NaN) skipped."""
    known = per_class_ap[~per_class_ap.isnan()]
    if len(known) == 0:
        raise ValueError("no class has a positive image: mean average precision is not defined")
    return known.mean().item()


def micro_f1(probabilities: Tensor, targets: Tensor, threshold: float) -> float:
    """F1 over all (image, class) decisions together: a label is predicted when its probability is
    above ``threshold``."""
    predicted = probabilities > threshold
    positive = targets.bool()
    true_positives = (predicted & positive).sum().item()
    wrong = (predicted ^ positive).sum().item()
    return 2 * true_positives / (2 * true_positives + wrong) if true_positives else 0.0


def best_threshold(probabilities: Tensor, targets: Tensor) -> tuple[float, float]:
    """The decision threshold that maximises micro-F1 on these images, and that F1. Candidates are
    the midpoints between consecutive distinct probabilities (and below the lowest), so the
    chosen threshold separates the same decisions on other images as well as it can."""
    values = probabilities.flatten().double().unique()  # sorted
    candidates = torch.cat([values[:1] / 2, (values[1:] + values[:-1]) / 2])
    order = probabilities.flatten().double().argsort(descending=True)
    hits = targets.flatten().double()[order]
    sorted_probabilities = probabilities.flatten().double()[order]
    # For each candidate t, the predicted labels are those with probability > t: a prefix of the order.
    predicted = torch.searchsorted(-sorted_probabilities, -candidates, side="left")
    true_positives = torch.cat([torch.zeros(1, dtype=torch.float64), hits.cumsum(0)])[predicted]
    f1 = 2 * true_positives / (predicted + hits.sum()).clamp(min=1)
    best = int(f1.argmax())
    return candidates[best].item(), f1[best].item()


@dataclass
class MultiLabelScores:
    """Held-out scores of a multi-label classifier. ``f1`` is micro-F1 at ``threshold``."""

    mean_ap: float
    #: AP per class, NaN where the images hold no positive of the class
    per_class_ap: list[float]
    f1: float
    threshold: float
    loss: float
    count: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self, class_names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: the image count, mAP, F1 and its threshold, loss, each class's AP by name
        (null for a class without a positive image: JSON has no NaN) and the files skipped."""
        return {
            "images": self.count,
            "mAP": self.mean_ap,
            "f1": self.f1,
            "threshold": self.threshold,
            "loss": self.loss,
            "per_class_ap": {
                name: None if math.isnan(ap) else ap for name, ap in zip(class_names, self.per_class_ap, strict=True)
            },
            "skipped": self.skipped,
        }

    def summary(self) -> str:
        """One line: mAP, micro-F1 at the threshold, and loss."""
        return (
            f"mAP {100 * self.mean_ap:.2f}%  micro-F1 {100 * self.f1:.2f}% at threshold {self.threshold:.3f}  "
            f"loss {self.loss:.4f}"
        )

    def per_class_table(self, class_names: Sequence[str]) -> str:
        """One line per class: its AP."""
        return "\n".join(
            f"  {name:>20s}  AP " + ("no positive image" if math.isnan(ap) else f"{100 * ap:6.2f}%")
            for name, ap in zip(class_names, self.per_class_ap, strict=True)
        )


@torch.inference_mode()
def multilabel_logits(
    model: nn.Module, loader: DataLoader, *, device: torch.device, precision: str = "fp32"
) -> tuple[Tensor, Tensor, list[str]]:
    """Logits and multi-hot targets ``(N, classes)`` of every image ``loader`` yields (batches of
    ``(images, targets, broken)``), and the unreadable files' messages."""
    was_training = model.training
    model.eval()
    logits, targets, skipped = [], [], []
    for images, labels, broken in loader:
        skipped += broken
        if images is None:
            continue
        with autocast(device, precision):
            logits.append(model(images.to(device, non_blocking=True)).float().cpu())
        targets.append(labels.float())
    model.train(was_training)
    if not logits:
        raise ValueError("no readable image to evaluate on")
    return torch.cat(logits), torch.cat(targets), skipped


def score_multilabel(
    logits: Tensor, targets: Tensor, *, threshold: float | None = None, skipped: list[str] | None = None
) -> MultiLabelScores:
    """mAP, per-class AP, loss (binary cross-entropy), and micro-F1 of the sigmoid probabilities
    at ``threshold`` — or, without one, at the threshold that maximises micro-F1 on these very
    images (what a held-out set is for)."""
    probabilities = logits.sigmoid()
    per_class = average_precision(logits, targets)  # logits: no ties where sigmoids round to 1
    if threshold is None:
        threshold, f1 = best_threshold(probabilities, targets)
    else:
        f1 = micro_f1(probabilities, targets, threshold)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
    return MultiLabelScores(
        mean_ap=mean_average_precision(per_class),
        per_class_ap=per_class.tolist(),
        f1=f1,
        threshold=threshold,
        loss=loss,
        count=len(targets),
        skipped=skipped or [],
    )
