"""What this machine's CPU can compute natively, read from its flags (Linux ``/proc/cpuinfo``;
elsewhere none are known, and the portable choice is made)."""

from __future__ import annotations

import functools
from pathlib import Path


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
