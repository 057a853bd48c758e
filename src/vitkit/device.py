"""Where and in which number format vitkit computes: training, evaluation, prediction and serving."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .machine import cpu_has_native_bf16


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name not in ("bf16", "fp32"):
        raise ValueError(f"unknown precision {name!r}; choose bf16, fp32 or auto")
    return name


def device_of(module: nn.Module) -> torch.device:
    """Where ``module``'s weights are: CPU for one without torch weights (an int8 model, which
    ONNX Runtime runs)."""
    weights = next(iter(module.parameters()), None)
    return torch.device("cpu") if weights is None else weights.device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
