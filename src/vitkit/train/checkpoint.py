"""Resumable checkpoints in one safetensors file, written atomically.

Everything a run needs to continue exactly is in ``checkpoint.safetensors``: model (and EMA)
weights, optimiser state and the RNG state as tensors; optimiser hyper-parameters, scheduler
state and the position in the data as JSON metadata. Nothing is pickled, so loading a
checkpoint cannot run code. Writes go to a temporary file that replaces the old one only once
complete: a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..fileio import atomic_write

CHECKPOINT_NAME = "checkpoint.safetensors"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            elif value is not None:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: nn.Module | None,
    progress: dict[str, Any],
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write the full training state to ``path`` atomically. ``progress`` is JSON data
    (epoch, step, batches done in the epoch, best accuracy, ...). ``model_state`` and
    ``optimizer_state`` replace the model's and optimiser's own state dicts (gathered ones, when
    the model is sharded over processes)."""
    model_state = model.state_dict() if model_state is None else model_state
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer_state or optimizer.state_dict())
    tensors.update(optimizer_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    metadata = {
        "format": "vitkit-checkpoint/1",
        "progress": json.dumps(progress),
        "optimizer": json.dumps(optimizer_meta),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ema: nn.Module | None,
    restore_states: Callable[[dict[str, torch.Tensor], dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Restore everything :func:`save_checkpoint` wrote (RNG included) and return the progress.
    ``restore_states(model_state, optimizer_state)``, if given, loads those two instead of
    ``load_state_dict`` (for a model sharded over processes)."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable vitkit checkpoint: {error}") from error
    if metadata.get("format") != "vitkit-checkpoint/1":
        raise ValueError(f"{path} is a safetensors file but not a vitkit checkpoint (no checkpoint metadata)")

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer_state = _unflatten_optimizer(tensors, json.loads(metadata["optimizer"]))
    if restore_states is not None:
        restore_states(section("model."), optimizer_state)
    else:
        model.load_state_dict(section("model."))
        optimizer.load_state_dict(optimizer_state)
    if ema is not None:
        ema.load_state_dict(section("ema."))
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return json.loads(metadata["progress"])
