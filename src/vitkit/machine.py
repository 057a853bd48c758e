"""What this machine is and what its CPU computes natively, read from its flags (Linux
``/proc/cpuinfo``; elsewhere none are known, and the portable choice is made), and the record
of it that every measurement carries (:func:`host_record`)."""

from __future__ import annotations

import datetime
import functools
import os
import platform
from pathlib import Path
from typing import Any

import torch

#: the flags that decide vitkit's speed choices, shown with every measurement
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "asimd", "sve")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx512_bf16``, ``amx_int8``, ...), empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()[2:])


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: without either, bf16 matmuls are emulated and far slower than fp32."""
    return not cpu_flags().isdisjoint({"amx_bf16", "avx512_bf16"})


def cpu_has_int8_dot_product() -> bool:
    """VNNI or AMX-INT8: without them, x86 multiplies uint8 by int8 in 16-bit pairs that saturate,
    and ONNX Runtime's int8 matmuls need weights of 7 bits (its ``reduce_range``) to stay right."""
    return not cpu_flags().isdisjoint({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``AMD EPYC 9R14``, ``Intel(R) Xeon(R) Platinum 8488C``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_host(host: dict[str, Any]) -> str:
    """A :func:`host_record` in one line: CPU model (flags), threads, torch version."""
    return f"{host['cpu']} ({' '.join(host['cpu_flags'])}), {host['threads']} threads, torch {host['torch']}"


def host_record() -> dict[str, object]:
    """What a measurement was taken on, to store beside it: CPU model and speed-relevant flags,
    cores, torch threads, GPU, torch version and date."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": [flag for flag in SPEED_FLAGS if flag in cpu_flags()],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "date": datetime.date.today().isoformat(),
    }
