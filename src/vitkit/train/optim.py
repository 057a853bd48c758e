"""Optimiser and learning-rate schedule from a :class:`TrainConfig`."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConfigError, TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and conv kernels decay; vectors (biases, norms) and what each module
    lists in its ``no_weight_decay()`` (timm's convention: class and [mask] tokens, position
    embeddings) do not."""
    exempt = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if callable(getattr(module, "no_weight_decay", None))
        for name in module.no_weight_decay()
    }
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig, processes: int = 1) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD with decoupled (AdamW) or L2 (Adam, SGD) weight decay on the decaying
    group only, using PyTorch's foreach implementations; ``processes`` counts in the global batch."""
    groups = param_groups(model, config.weight_decay)
    lr = config.peak_lr(processes)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(config.betas), foreach=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(config.betas), foreach=True)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, foreach=True)
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose adamw, adam or sgd")


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor on the peak learning rate at optimiser ``step`` (0-based): linear warmup from
    1/warmup to 1, then cosine or linear decay to 0 at ``total_steps``, or constant."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "constant":
        return 1.0
    raise ConfigError(f"unknown schedule {schedule!r}; choose cosine, linear or constant")


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
