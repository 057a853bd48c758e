"""Top-k predictions for image files with a loaded model folder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data.images import is_image_file, load_image
from .interop.sources import LoadedModel


@dataclass
class Prediction:
    path: str
    #: (class name, probability), most likely first; empty when the file could not be read
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


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
    loaded: LoadedModel, paths: Iterable[str | Path], *, top_k: int = 5, batch_size: int = 64
) -> list[Prediction]:
    """Class probabilities (softmax) for each image file; unreadable files get an ``error``."""
    loaded.require_classifier("predict")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    model, preprocess, class_names = loaded
    device = next(model.parameters()).device
    k = min(top_k, len(class_names))
    files = expand_image_paths(paths)
    predictions: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        batch, readable = [], []
        for path in files[start : start + batch_size]:
            prediction = Prediction(str(path))
            predictions.append(prediction)
            try:
                batch.append(preprocess(load_image(path, model.config.in_chans)))
                readable.append(prediction)
            except OSError as error:
                prediction.error = str(error)
        if not batch:
            continue
        probabilities = model(torch.stack(batch).to(device)).float().softmax(dim=1)
        values, indices = probabilities.topk(k, dim=1)
        for prediction, row_values, row_indices in zip(readable, values.tolist(), indices.tolist(), strict=True):
            prediction.top = [(class_names[i], p) for i, p in zip(row_indices, row_values, strict=True)]
    return predictions
