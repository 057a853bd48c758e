"""One optimiser step, apart from the loop that feeds it (big_vision's ``update_fn``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from . import distributed
from .distributed import Processes
from .objectives import Objective


@dataclass(frozen=True)
class StepResult:
    #: the step's mean micro-batch loss over every process
    loss: float
    #: its sum and the number of micro-batches it is the mean of
    loss_sum: float
    count: int
    #: the global gradient norm before clipping (NaN when the step was skipped)
    grad_norm: float = math.nan

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss)


def train_step(
    objective: Objective,
    wrapped: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: AveragedModel | None,
    micro_batches: Sequence[tuple[Tensor, Tensor]],
    *,
    grad_clip: float,
    processes: Processes,
) -> StepResult:
    """Accumulate the gradients of ``micro_batches`` (images and labels on the device) through
    ``wrapped`` (the objective's module, or its DDP/FSDP wrapper), then, only if the mean loss
    over every process is finite, measure and clip the gradient norm, step the optimiser and the
    schedule and update the EMA.
    A non-finite loss leaves the weights as they were (the caller stops the run)."""
    losses = torch.zeros(2, dtype=torch.float64)  # this process's loss sum and micro-batch count
    for index, (images, labels) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with distributed.no_gradient_sync(wrapped, skip=not last):  # DDP syncs gradients once a step
            loss = objective.loss(wrapped, images, labels)
            (loss / len(micro_batches)).backward()
        losses += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
    total, count = distributed.all_reduce_sum(losses, processes).tolist()
    result = StepResult(total / max(count, 1), total, int(count))
    if not result.finite:  # the same verdict in every process, so none is left waiting
        optimizer.zero_grad(set_to_none=True)
        return result
    # The norm is measured even without clipping (an infinite limit scales by exactly 1): it is
    # logged with the loss, the first sign of a run about to diverge.
    norm = torch.nn.utils.clip_grad_norm_(objective.module.parameters(), grad_clip if grad_clip > 0 else math.inf)
    result = dataclasses.replace(result, grad_norm=float(norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if ema is not None:
        ema.update_parameters(objective.module)
    return result
