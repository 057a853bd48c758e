"""Predictions for image files with a loaded model folder: the top-k classes (softmax), or for a
multi-label model the set of labels whose sigmoid probability is above its threshold."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import cores
from .data.images import DEFAULT_MAX_PIXELS, is_image_file, load_image
from .device import autocast, device_of
from .interop.sources import LoadedModel


@dataclass
class Prediction:
    path: str
    #: (class name, probability), most likely first; empty when the file could not be read
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    #: a multi-label model's answer: every (label, probability) above its threshold, most likely
    #: first (``top`` stays empty); None for a model that predicts one class
    labels: list[tuple[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply: ``labels`` for a multi-label model, ``top`` for the others."""
        document = dataclasses.asdict(self)
        document.pop("top" if self.labels is not None else "labels")
        return document


def class_probabilities(logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Logits ``(..., classes)`` → probabilities: a sigmoid per class for a multi-label model,
    else the softmax over the classes."""
    return logits.float().sigmoid() if multi_label else logits.float().softmax(dim=-1)


def labels_above(probabilities: torch.Tensor, threshold: float) -> list[tuple[int, float]]:
    """The (class index, probability) of every class above ``threshold`` in ``probabilities``
    ``(classes,)``, most likely first."""
    chosen = (probabilities > threshold).nonzero().flatten().tolist()
    return sorted(((i, probabilities[i].item()) for i in chosen), key=lambda pair: -pair[1])


def expand_image_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders replaced by the image files under them (sorted). A path that
    does not exist is an error naming it."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        elif path.is_file():
            found.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    return found


@torch.inference_mode()
def predict_files(
    loaded: LoadedModel,
    paths: Iterable[str | Path],
    *,
    top_k: int = 5,
    batch_size: int = 64,
    precision: str = "fp32",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[Prediction]:
    """Class probabilities for each image file: the ``top_k`` classes (softmax), or for a
    multi-label model the labels above its threshold (``top_k`` does not apply); unreadable
    files, and those over ``max_pixels`` (see :func:`~vitkit.data.images.load_image`), get an
    ``error``. ``precision`` is ``"fp32"`` or ``"bf16"`` (autocast)."""
    loaded.require_classifier("predict")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    model, preprocess, class_names = loaded
    device = device_of(model)
    k = min(top_k, len(class_names))
    files = expand_image_paths(paths)
    predictions: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        batch, readable = [], []
        for path in files[start : start + batch_size]:
            prediction = Prediction(str(path), labels=[] if loaded.multi_label else None)
            predictions.append(prediction)
            try:
                batch.append(
                    preprocess(
                        load_image(path, model.config.in_chans, max_pixels=max_pixels, min_side=preprocess.min_side)
                    )
                )
                readable.append(prediction)
            except OSError as error:
                prediction.error = str(error)
        if not batch:
            continue
        cores.rebalance()
        with autocast(device, precision):
            logits = model(torch.stack(batch).to(device))
        probabilities = class_probabilities(logits, multi_label=loaded.multi_label)
        if loaded.multi_label:
            for prediction, row in zip(readable, probabilities.cpu(), strict=True):
                prediction.labels = [(class_names[i], p) for i, p in labels_above(row, loaded.threshold)]
            continue
        values, indices = probabilities.topk(k, dim=1)
        for prediction, row_values, row_indices in zip(readable, values.tolist(), indices.tolist(), strict=True):
            prediction.top = [(class_names[i], p) for i, p in zip(row_indices, row_values, strict=True)]
    return predictions
