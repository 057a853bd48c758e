"""What a run measures at each epoch end, chosen by ``config.evaluators`` as big_vision chooses its
evaluators: each has a ``name`` and ``run(module) -> EpochMetrics``. The first one's score ranks
epochs; their metrics are merged into one record.

- ``heldout``: the objective's own metrics on the held-out split (a classifier's top-1, top-5,
  loss and confusion matrix; a pre-training objective's loss and metrics).
- ``fewshot[:SHOTS]``: few-shot linear accuracy of the frozen ViT features (paper §4.1), so
  pre-training can report how useful its features are while it runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.datasets.image_datasets import DataSplits
from ..data.datasets.subsets import dataset_labels
from ..data.shards import ShardStream
from ..data.transforms import eval_transform
from ..device import autocast
from ..probe.fewshot import check_enough_shots, fewshot_of_splits
from .config import ConfigError, TrainConfig, evaluator_spec
from .distributed import Processes
from .inputs import held_out_batches
from .objectives import EpochMetrics, Objective, combine


class Evaluator(Protocol):
    name: str

    def run(self, module: nn.Module) -> EpochMetrics:
        """Measure ``module`` (the objective's module, or its EMA copy)."""
        ...


@dataclass
class HeldOut:
    """The objective's own held-out metrics, each process on its share, summed over processes."""

    name: ClassVar[str] = "heldout"
    objective: Objective
    dataset: Dataset
    processes: Processes
    device: torch.device
    workers: int

    def run(self, module: nn.Module) -> EpochMetrics:
        loader = held_out_batches(self.dataset, self.processes, workers=self.workers, device=self.device)
        return combine(self.objective.held_out_metrics(module, loader), self.processes)


@dataclass
class FewShot:
    """Few-shot linear accuracy of the frozen features of the objective's ViT: ``shots`` training
    images per class (drawn once from the run's seed) fit a closed-form ridge classifier, scored on
    every held-out image. Every process computes the same figure (no communication)."""

    name: ClassVar[str] = "fewshot"
    objective: Objective
    train: Dataset
    val: Dataset
    preprocess: Callable
    class_names: Sequence[str]
    shots: tuple[int, ...]
    seed: int
    device: torch.device
    precision: str

    def run(self, module: nn.Module) -> EpochMetrics:
        with autocast(self.device, self.precision):
            results = fewshot_of_splits(
                self.objective.saved_model(module),
                self.preprocess,
                self.train,
                self.val,
                class_names=self.class_names,
                shots=self.shots,
                seeds=(self.seed,),
            )
        metrics = {f"fewshot_{result.shots}shot": result.mean for result in results}
        return EpochMetrics(metrics, len(self.val), score_key=f"fewshot_{max(self.shots)}shot", higher_is_better=True)


def build_evaluators(
    config: TrainConfig,
    *,
    objective: Objective,
    data: DataSplits,
    val_set: Dataset,
    img_size: int,
    processes: Processes,
    device: torch.device,
    precision: str,
) -> list[Evaluator]:
    """The evaluators ``config.evaluators`` names, in order."""
    evaluators: list[Evaluator] = []
    for spec in config.evaluators:
        name, shots = evaluator_spec(spec)
        if name == "heldout":
            evaluators.append(HeldOut(objective, val_set, processes, device, config.workers))
            continue
        if isinstance(data.train, ShardStream):
            raise ConfigError(f"--evaluators {spec}: few-shot evaluation needs an image folder, CSV or built-in data")
        try:
            check_enough_shots(dataset_labels(data.train), max(shots), data.class_names)
        except ValueError as error:
            raise ConfigError(f"--evaluators {spec}: {error}") from error
        preprocess = eval_transform(img_size, data.in_chans)
        fewshot = FewShot(
            objective, data.train, data.val, preprocess, data.class_names, shots, config.seed, device, precision
        )
        evaluators.append(fewshot)
    return evaluators


def run_evaluators(evaluators: Sequence[Evaluator], module: nn.Module) -> EpochMetrics:
    """Every evaluator's metrics in one record, ranked by the first one's score."""
    results = [evaluator.run(module) for evaluator in evaluators]
    first = results[0]
    metrics = {name: value for result in results for name, value in result.metrics.items()}
    confusion = next((r.confusion for r in results if r.confusion is not None), None)
    skipped = sorted({name for result in results for name in result.skipped})
    return dataclasses.replace(first, metrics=metrics, confusion=confusion, skipped=skipped)
