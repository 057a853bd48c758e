"""Running one training job as several processes with ``torch.distributed`` (launched by torchrun).

``torchrun --nproc-per-node N vitkit train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
for each process; :func:`start` joins them into one process group (NCCL on CUDA, gloo on CPU) and
every other function here is a no-op for a single process, so the training loop reads the same
either way. The model is wrapped in DDP (every process holds the whole model; gradients are
averaged over the processes in the backward pass), or with ``fsdp`` sharded by FSDP2's
``fully_shard`` (each block, then the whole): parameters, gradients and optimiser state are split
over the processes and gathered block by block when needed. Checkpoints always hold the complete,
unsharded state, so a run can resume with any number of processes, sharded or not.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from ..models.vit import Block


class DistributedFailure(RuntimeError):
    """Another process of the job stopped or stopped answering; this one stops too."""


@dataclass(frozen=True)
class Processes:
    """Where this process stands in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_environment() -> Processes:
    """The torchrun variables, or a single process when they are not set."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    return Processes(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))


def start(processes: Processes, device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group (once) and return this process's device (``cuda:LOCAL_RANK`` on GPUs).
    A collective that waits longer than ``timeout_s`` fails instead of hanging."""
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank if processes.distributed else 0)
        torch.cuda.set_device(device)
    if processes.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, timeout=timedelta(seconds=timeout_s), device_id=device if backend == "nccl" else None
        )
    return device


def stop(processes: Processes) -> None:
    """Leave the process group after everyone has arrived (so no process exits mid-collective)."""
    if processes.distributed and dist.is_initialized():
        with contextlib.suppress(RuntimeError):
            dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, processes: Processes, device: torch.device, *, fsdp: bool = False) -> nn.Module:
    """DDP around ``module``, or with ``fsdp`` the module sharded in place; the module itself for
    a single process."""
    if not processes.distributed:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in [m for m in module.modules() if isinstance(m, Block)]:
            fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def no_gradient_sync(module: nn.Module, skip: bool) -> contextlib.AbstractContextManager:
    """While accumulating micro-batches, DDP need not all-reduce gradients until the last one."""
    if skip and isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(values: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The element-wise sum over all processes (``values`` itself for one process)."""
    if not processes.distributed:
        return values
    # NCCL reduces GPU tensors only; the loop's counters live on the CPU.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else values.device
    reduced = values.to(device, copy=True)
    dist.all_reduce(reduced)
    return reduced.to(values.device)


def rank_batches(indices: list[int], batch_size: int, processes: Processes) -> list[int]:
    """This process's share of an epoch's sample order: the order is cut into consecutive
    micro-batches of ``batch_size`` per process, and micro-batch ``k`` of rank ``r`` is chunk
    ``k · world_size + r``. So N processes × batch b see exactly what one process × batch N·b
    sees, and the epoch order does not depend on the number of processes."""
    if not processes.distributed:
        return indices
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    return [index for chunk in chunks[processes.rank :: processes.world_size] for index in chunk]


def gathered_states(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The complete model and optimiser state of a sharded module, laid out as a plain module's
    ``state_dict()`` (optimiser state by parameter name). Every process must call this; rank 0
    receives the tensors (on the CPU), the others empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def restore_sharded(
    module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
) -> None:
    """Load complete (unsharded) states, as :func:`gathered_states` gives them, into a sharded module."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        module,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optimizer_state,
        options=StateDictOptions(full_state_dict=True),
    )


def gathered_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The complete weights of a sharded module on rank 0 (every process must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
