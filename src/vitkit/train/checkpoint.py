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
from ..interop.keys import upgrade_vitkit_keys

CHECKPOINT_NAME = "checkpoint.safetensors"


FORMAT = "vitkit-checkpoint/2"  # /2: optimiser state by parameter name (/1: by position)


def parameter_names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimiser's parameters, in its order (the positions of its state dict)."""
    names = {id(param): name for name, param in module.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def named_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter names in place of positions (as
    ``torch.distributed.checkpoint`` lays it out): it then survives a change in parameter order."""
    return _by_name(optimizer.state_dict(), parameter_names(module, optimizer))


def _by_name(state: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }


def _by_position(state: dict[str, Any], names: list[str], path: Path) -> dict[str, Any]:
    position = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(state["state"]) - set(position))
    if unknown:
        raise ValueError(f"{path} holds optimiser state for parameters this model lacks (e.g. {unknown[0]})")
    return {
        "state": {position[name]: value for name, value in state["state"].items()},
        # torch pairs a group's saved positions with its parameters in order: list them in the model's
        "param_groups": [
            {**group, "params": sorted(position[name] for name in group["params"])} for group in state["param_groups"]
        ],
    }


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for name, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{name}.{key}"] = value.detach().cpu().contiguous()
            elif value is not None:
                scalars.setdefault(name, {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for flat, value in tensors.items():
        if flat.startswith("optimizer."):
            name, key = flat.removeprefix("optimizer.").rsplit(".", 1)
            state.setdefault(name, {})[key] = value
    for name, values in meta["scalars"].items():
        state.setdefault(name, {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _unflatten_v1_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """A /1 checkpoint's optimiser state (by position in vitkit 0.1's parameter order), by name."""
    state: dict[int, dict[str, Any]] = {}
    for flat, value in tensors.items():
        if flat.startswith("optimizer."):
            index, key = flat.removeprefix("optimizer.").split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for flat, value in meta["scalars"].items():
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return _by_name({"state": state, "param_groups": meta["param_groups"]}, _v1_order(names, meta["param_groups"]))


def _v1_order(names: list[str], groups: list[dict[str, Any]]) -> list[str]:
    """Today's parameter names in vitkit 0.1's order. The one change since: the learned position
    table (then ``pos_embed.weight``, in a module after the patch embedding) is now the model's
    own ``pos_embed``, listed before its modules' parameters."""
    order, start = [], 0
    for group in groups:
        members = names[start : start + len(group["params"])]
        start += len(members)
        for name in [n for n in members if n == "pos_embed" or n.endswith(".pos_embed")]:
            members.remove(name)
            stem = name.removesuffix("pos_embed") + "patch_embed."
            after = max((i + 1 for i, n in enumerate(members) if n.startswith(stem)), default=0)
            members.insert(after, name)
        order += members
    return order


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
    ``optimizer_state`` (by parameter name) replace the model's and optimiser's own state dicts
    (gathered ones, when the model is sharded over processes)."""
    model_state = model.state_dict() if model_state is None else model_state
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in ema.state_dict().items()})
    optimizer_tensors, optimizer_meta = _flatten_optimizer(optimizer_state or named_optimizer_state(model, optimizer))
    tensors.update(optimizer_tensors)
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    metadata = {
        "format": FORMAT,
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
    ``restore_states(model_state, optimizer_state)``, if given, loads those two (the optimiser's by
    parameter name) instead of ``load_state_dict`` (for a model sharded over processes).
    Checkpoints of vitkit 0.1 (format /1) resume too."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable vitkit checkpoint: {error}") from error
    version = metadata.get("format")
    if version not in (FORMAT, "vitkit-checkpoint/1"):
        raise ValueError(f"{path} is a safetensors file but not a vitkit checkpoint (no checkpoint metadata)")

    def section(prefix: str) -> dict[str, torch.Tensor]:
        return upgrade_vitkit_keys({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    names = parameter_names(model, optimizer)
    meta = json.loads(metadata["optimizer"])
    if version == FORMAT:
        optimizer_state = _unflatten_optimizer(tensors, meta)
    else:
        optimizer_state = _unflatten_v1_optimizer(tensors, meta, names)
    if restore_states is not None:
        restore_states(section("model."), optimizer_state)
    else:
        model.load_state_dict(section("model."))
        optimizer.load_state_dict(_by_position(optimizer_state, names, path))
    if ema is not None:
        ema.load_state_dict(section("ema."))
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return json.loads(metadata["progress"])
