"""Scoring a classifier on a dataset: top-1, top-5, per class, confusion matrix; for a multi-label
classifier mAP, per-class AP and F1 (see :mod:`vitkit.train.multilabel`). A run's per-epoch
record is another thing, :class:`vitkit.train.objectives.EpochMetrics`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets.image_datasets import TransformedDataset, collate_skipping_broken, preprocess_in_memory
from ..data.load import load_data
from ..data.shards import ShardStream
from ..device import autocast, device_of
from ..interop.pretrained import imagenet1k_class_names, imagenet1k_synsets
from ..interop.sources import LoadedModel
from .multilabel import MultiLabelScores, multilabel_logits, score_multilabel


@dataclass
class SingleLabelScores:
    """The scores of a single-label classifier (one class per image) on a dataset: fractions of
    the ``count`` images, and the mean cross-entropy ``loss``."""

    top1: float
    top5: float
    loss: float
    count: int
    #: confusion[true, predicted] counts
    confusion: torch.Tensor
    skipped: list[str] = field(default_factory=list)
    #: the top-1 class of every image scored, in the loader's order
    predicted: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (self.confusion.diagonal() / totals).tolist()

    def to_dict(self, class_names: Sequence[str], *, baseline: SingleLabelScores | None = None) -> dict[str, Any]:
        """JSON-ready: the image count, top-1, top-5, loss, each class's accuracy by name and the
        files skipped; with ``baseline`` (another model on the same images) also the
        ``top1_agreement`` with it."""
        document = {
            "images": self.count,
            "top1": self.top1,
            "top5": self.top5,
            "loss": self.loss,
            "per_class": dict(zip(class_names, self.per_class_accuracy(), strict=True)),
            "skipped": self.skipped,
        }
        if baseline is not None:
            document["top1_agreement"] = self.agreement(baseline)
        return document

    def summary(self) -> str:
        """One line: top-1, top-5 and loss."""
        return f"top-1 {100 * self.top1:.2f}%  top-5 {100 * self.top5:.2f}%  loss {self.loss:.4f}"

    def compared_with(self, baseline: SingleLabelScores) -> str:
        """One line: how often these top-1 classes are ``baseline``'s (another model on the same
        images), and the difference in top-1."""
        return (
            f"the same top-1 class for {100 * self.agreement(baseline):.2f}% of the images, "
            f"top-1 {100 * (self.top1 - baseline.top1):+.2f} points"
        )

    def per_class_table(self, class_names: Sequence[str], *, beside: SingleLabelScores | None = None) -> str:
        """One line per class: its accuracy, and after a ``|`` that of ``beside`` (another model on
        the same images) when given."""
        columns = [self.per_class_accuracy()] + ([beside.per_class_accuracy()] if beside is not None else [])
        return "\n".join(
            f"  {name:>20s}  " + " | ".join(f"{100 * accuracy:6.2f}%" for accuracy in accuracies)
            for name, *accuracies in zip(class_names, *columns, strict=True)
        )

    def agreement(self, other: SingleLabelScores) -> float:
        """The fraction of images given the same top-1 class here as in ``other`` (another model
        scored on the same images, e.g. the int8 one against the float one)."""
        if len(self.predicted) != len(other.predicted):
            raise ValueError(f"the results cover different images ({len(self.predicted)} vs {len(other.predicted)})")
        return (self.predicted == other.predicted).float().mean().item()


@torch.inference_mode()
def score_single_label(
    model: nn.Module,
    loader: DataLoader,
    *,
    num_classes: int,
    device: torch.device,
    precision: str = "fp32",
    label_map: torch.Tensor | None = None,
) -> SingleLabelScores:
    """Score the single-label classifier ``model`` over ``loader`` (batches of ``(images, labels,
    broken)``, see :func:`vitkit.data.datasets.collate_skipping_broken`), every sample counted once.
    ``label_map[data_label]`` is the model's index of each data class, when they differ."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    top5_hits, loss_sum, count, skipped, predictions = 0, 0.0, 0, [], []
    for images, labels, broken in loader:
        skipped += broken
        if images is None:
            continue
        if label_map is not None:
            labels = label_map[labels]
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
        predicted = logits.argmax(dim=1)
        predictions.append(predicted.cpu())
        confusion += torch.bincount(
            (labels * num_classes + predicted).cpu(), minlength=num_classes * num_classes
        ).reshape(num_classes, num_classes)
        count += len(labels)
    model.train(was_training)
    if count == 0:
        raise ValueError("no readable image to evaluate on")
    return SingleLabelScores(
        top1=confusion.diagonal().sum().item() / count,
        top5=top5_hits / count,
        loss=loss_sum / count,
        count=count,
        confusion=confusion,
        skipped=skipped,
        predicted=torch.cat(predictions),
    )


def _label_map(data_classes: list[str], model_classes: list[str], data_spec: str) -> torch.Tensor | None:
    """The model's index of each data class (None when they are the same list)."""
    if data_classes == model_classes:
        return None
    index = {name: i for i, name in enumerate(model_classes)}
    if model_classes == imagenet1k_class_names():
        index.update({synset: i for i, synset in enumerate(imagenet1k_synsets())})
    unknown = [name for name in data_classes if name not in index]
    if unknown:

        def shown(names: list[str]) -> str:
            return ", ".join(names[:10]) + (", …" if len(names) > 10 else "")

        raise ValueError(
            f"the classes of {data_spec} ({shown(data_classes)}) are not the model's ({shown(model_classes)}): "
            f"{shown(unknown)} {'is' if len(unknown) == 1 else 'are'} not among them. Name the class folders as the "
            "model names its classes (an ImageNet-1k model also knows WordNet ids such as n01440764)"
        )
    return torch.tensor([index[name] for name in data_classes])


def score_model(
    loaded: LoadedModel,
    data_spec: str,
    *,
    split: str = "val",
    batch_size: int = 256,
    workers: int = 0,
    val_fraction: float = 0.1,
    seed: int = 0,
    precision: str = "fp32",
) -> SingleLabelScores | MultiLabelScores:
    """Score a loaded model on a data spec's ``split`` ("val" or "train"), with the model's own
    preprocessing. Each class of the data must be one of the model's, by name (any order, a subset
    is fine) or, for an ImageNet-1k model, by WordNet id (``n01440764/``, ImageNet's own layout).
    ``val_fraction`` and ``seed`` hold images out of data without a split of its own, as
    :func:`vitkit.data.load.load_data` does (a run's own values give its held-out images).
    ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast).

    A multi-label model (``loaded.multi_label``) reads the data's labels as label sets and gives a
    :class:`MultiLabelScores`: mAP and per-class AP (in the model's class order; NaN for a class
    without a positive in the data), and micro-F1 at the model's own threshold (chosen on
    held-out data when it was trained). Other models give :class:`SingleLabelScores` (top-1, top-5)."""
    loaded.require_classifier("evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model, multi_label = loaded.model, loaded.multi_label
    loader, label_map, skipped = _held_out_loader(
        loaded, data_spec, split, batch_size, workers, multi_label=multi_label, val_fraction=val_fraction, seed=seed
    )
    device = device_of(model)
    if not multi_label:
        result = score_single_label(
            model, loader, num_classes=len(loaded.class_names), device=device, precision=precision, label_map=label_map
        )
        result.skipped = sorted(set(skipped) | set(result.skipped))
        return result
    logits, data_targets, broken = multilabel_logits(model, loader, device=device, precision=precision)
    targets = data_targets
    if label_map is not None:  # the data's columns, placed at the model's indices
        targets = torch.zeros(len(data_targets), len(loaded.class_names))
        targets[:, label_map] = data_targets
    return score_multilabel(logits, targets, threshold=loaded.threshold, skipped=sorted(set(skipped) | set(broken)))


def _held_out_loader(
    loaded: LoadedModel,
    data_spec: str,
    split: str,
    batch_size: int,
    workers: int,
    *,
    multi_label: bool,
    val_fraction: float,
    seed: int,
) -> tuple[DataLoader, torch.Tensor | None, list[str]]:
    """Batches of ``split`` with the model's preprocessing, the model's index of each data class
    (None when they are the same list), and the files skipped while scanning."""
    model, preprocess, class_names = loaded.model, loaded.preprocess, loaded.class_names
    data = load_data(
        data_spec, in_chans=model.config.in_chans, val_fraction=val_fraction, seed=seed, multi_label=multi_label
    ).check_image_labels(data_spec, "a classifier's scores")
    if data.multi_label != multi_label:
        raise ValueError(
            f"{data_spec} holds {'several labels' if data.multi_label else 'one label'} per image, but the model "
            f"predicts {'a set of labels' if multi_label else 'one class'}"
        )
    label_map = _label_map(data.class_names, class_names, data_spec)
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    base = data.val if split == "val" else data.train
    if isinstance(base, ShardStream):
        dataset = base.configured(transform=preprocess)
    else:
        dataset = preprocess_in_memory(base, preprocess) or TransformedDataset(base, preprocess)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_skipping_broken)
    return loader, label_map, data.skipped
