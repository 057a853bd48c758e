"""Optimiser and learning-rate schedule from a :class:`TrainConfig`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn

from ..decisions import OPTIMIZER_KERNELS, decide_optimizer
from ..device import device_of
from .config import ConfigError, TrainConfig


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Matrices and conv kernels decay; vectors (biases, norms) and what each module lists in its
    ``no_weight_decay()`` (timm's convention: class and [mask] tokens, position embeddings) do
    not. With ``layer_decay`` (layer-wise learning-rate decay, as BEiT and MAE fine-tune), each
    depth of the model's ``group_matcher()`` gets its own groups with ``lr_scale`` =
    layer_decay^(distance from the top): the embeddings the smallest, the last block and final
    norm ``layer_decay``, the head 1, as timm groups them. Groups come top layer first."""
    exempt = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if callable(getattr(module, "no_weight_decay", None))
        for name in module.no_weight_decay()
    }
    if layer_decay is not None and not callable(getattr(model, "group_matcher", None)):
        raise ConfigError("--layer-decay needs a model that says its layers (group_matcher): use it to fine-tune a ViT")
    depth_of = _depths(model) if layer_decay is not None else lambda name: 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim <= 1 or name in exempt)
        key = (depth_of(name), decays)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decays else 0.0}
        groups[key]["params"].append(param)
    if layer_decay is not None:
        top = max(depth for depth, _ in groups)
        for (depth, _), group in groups.items():
            group["lr_scale"] = layer_decay ** (top - depth)
    return [groups[key] for key in sorted(groups, key=lambda k: (-k[0], not k[1]))]


def _depths(model: nn.Module) -> Callable[[str], int]:
    """Parameter name → depth, from the model's ``group_matcher()`` as timm reads it: 0 for the
    stem, i + 1 for block i; what the matcher places after the blocks (the final norm) goes with
    the last block, and the rest (head) one above."""
    matcher = model.group_matcher()
    stem = re.compile(matcher["stem"])
    blocks = [(re.compile(pattern), fixed) for pattern, fixed in matcher["blocks"]]
    depth_count = len(model.blocks)

    def depth(name: str) -> int:
        if stem.match(name):
            return 0
        for pattern, fixed in blocks:
            found = pattern.match(name)
            if found:
                return int(found.group(1)) + 1 if fixed is None else depth_count
        return depth_count + 1

    return depth


def build_optimizer(model: nn.Module, config: TrainConfig, processes: int = 1) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD with decoupled (AdamW) or L2 (Adam, SGD) weight decay on the decaying
    group only, using PyTorch's ``config.optimizer_kernel`` implementation (fused or foreach;
    "auto": the faster here, see vitkit.decisions); ``processes`` counts in the global batch."""
    if config.optimizer not in ("adamw", "adam", "sgd"):
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose adamw, adam or sgd")
    implementation = config.optimizer_kernel
    if implementation == "auto":
        implementation = decide_optimizer(model.parameters(), config.optimizer, device_of(model)).choice
    if implementation not in OPTIMIZER_KERNELS:
        raise ConfigError(f"unknown optimizer_kernel {implementation!r}; choose auto, {', '.join(OPTIMIZER_KERNELS)}")
    groups = param_groups(model, config.weight_decay, config.layer_decay)
    lr = config.peak_lr(processes)
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    kernel = {implementation: True}
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(config.betas), **kernel)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(config.betas), **kernel)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, **kernel)


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor on the peak learning rate at optimiser ``step`` (0-based): linear warmup from
    1/warmup to 1, then cosine, linear or polynomial (power 0.9, as mmsegmentation's and
    Segmenter's) decay to 0 at ``total_steps``, or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "poly":
        return (1.0 - progress) ** 0.9
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"unknown schedule {schedule!r}; choose cosine, linear, poly or constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps = (
        config.warmup_steps if config.warmup_steps is not None else round(config.warmup_epochs * steps_per_epoch)
    )
    lr_multiplier(0, total_steps=total_steps, warmup_steps=warmup_steps, schedule=config.schedule)  # validate now

    def multiplier(step: int) -> float:
        return lr_multiplier(step, total_steps=total_steps, warmup_steps=warmup_steps, schedule=config.schedule)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
