"""How far a run has come: everything a resumed run needs besides tensors, saved as JSON in its
checkpoint. Positions in an epoch count images, not batches, so any number of processes can resume."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..seeds import SEEDING


@dataclass
class Progress:
    #: images per optimiser step when this progress was counted
    global_batch: int
    #: completed epochs, and the position in the current one
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    images_in_epoch: int = 0
    #: sum and count of the step losses of the current epoch
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    #: the best epoch by the first evaluator's score (higher is better), and that score
    best_score: float = -math.inf
    best_epoch: int = 0
    #: training images seen by all processes, and the time spent on them
    images: int = 0
    train_seconds: float = 0.0
    data_wait_seconds: float = 0.0
    #: unreadable files met so far
    skipped: list[str] = field(default_factory=list)
    #: how the run derives its seeds (vitkit.seeds); kept so a run resumes with the streams it began with
    seeding: int = SEEDING

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, global_batch: int) -> Progress:
        """Read a checkpoint's progress, also as vitkit wrote it before this class existed (a
        plain dict: ``best_top1`` for ``best_score``, no image positions or wait time)."""
        values = dict(values)
        if "best_top1" in values:
            values.setdefault("best_score", values.pop("best_top1"))
        values.setdefault("global_batch", global_batch)
        values.setdefault("images_in_epoch", values.get("step_in_epoch", 0) * values["global_batch"])
        values.setdefault("seeding", 1)  # written before seeds came from vitkit.seeds.seed_for
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"the checkpoint's progress has unknown fields {unknown}: written by a newer vitkit?")
        return cls(**values)

    def rebatch(self, global_batch: int) -> bool:
        """Continue with another global batch: the epoch restarts at the last whole new batch, so
        every process gets as many micro-batches. True if the batch changed."""
        if global_batch == self.global_batch:
            return False
        self.images_in_epoch -= self.images_in_epoch % global_batch
        self.global_batch = global_batch
        return True

    def add_skipped(self, names: list[str]) -> None:
        if names:
            self.skipped = sorted({*self.skipped, *names})

    def finish_step(self, loss_sum: float, loss_count: int) -> None:
        self.step += 1
        self.step_in_epoch += 1
        self.images_in_epoch += self.global_batch
        self.epoch_loss_sum += loss_sum
        self.epoch_loss_count += loss_count

    def finish_epoch(self, score: float | None) -> None:
        """Close the epoch whose held-out ``score`` (higher is better) was just measured (None:
        the epoch was not scored)."""
        self.epoch += 1
        if score is not None and score > self.best_score:
            self.best_score, self.best_epoch = score, self.epoch
        self.step_in_epoch = self.images_in_epoch = self.epoch_loss_count = 0
        self.epoch_loss_sum = 0.0

    @property
    def epoch_loss(self) -> float:
        """Mean step loss of the current epoch so far."""
        return self.epoch_loss_sum / max(self.epoch_loss_count, 1)

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.train_seconds, 1e-9)

    @property
    def data_wait_fraction(self) -> float:
        """Share of the training time spent waiting for the data loader."""
        return self.data_wait_seconds / max(self.train_seconds, 1e-9)
