"""Linear layers whose weights oneDNN lays out once, for CPU inference.

``F.linear`` on the CPU hands oneDNN a plain weight matrix, which it reorders into its blocked
layout on every call; the MLP's GELU then reads and writes the whole hidden activation once more.
:func:`pack_linears` gives a model whose encoder blocks keep each weight in that layout, reordered
once, and whose first MLP layer applies GELU as it writes its output (what inductor's frozen
graphs do, without compiling). Measured on an AMD EPYC with AVX512-BF16, batch 32: S/16 and B/16
1.1–1.2× faster in bf16 and fp32. Whether it pays on this machine is the ``linear`` decision in
:mod:`vitkit.decisions`.

A packed model is for inference only: its linear layers hold no parameters (no gradients, not in
``state_dict``), and it stays on the CPU.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn

from .models.vit import Attention, Mlp


def packing_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`pack_linears` works here: on a CPU with oneDNN, in fp32, or in bf16 where
    oneDNN computes it."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """``linear`` (``y = x Wᵀ + b``, then exact GELU when ``gelu``) at ``dtype``, by oneDNN with
    W in its own layout. Inputs are cast to ``dtype``; outputs are in ``dtype``."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, *, gelu: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype, self.gelu = (
            linear.in_features,
            linear.out_features,
            dtype,
            gelu,
        )
        # Plain attributes, not buffers: Module.to() and state_dict() must not touch oneDNN's layout.
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().to(dtype))
        self.packed_bias = None if linear.bias is None else linear.bias.detach().to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            # oneDNN's op has no backward: gradients through it would silently be wrong
            raise RuntimeError(
                "a packed linear layer has no backward; take gradients through the model it was packed from"
            )
        rows = x.reshape(-1, self.in_features).to(self.dtype)
        attr, algorithm = ("gelu", "none") if self.gelu else ("none", "")  # "none": exact (erf) GELU
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed_weight, self.packed_bias, attr, [], algorithm)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"in_features={self.in_features}, out_features={self.out_features}, {dtype}, gelu={self.gelu}"


def pack_linears(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` (on the CPU) for inference at ``dtype`` whose attention and MLP linear
    layers are :class:`PackedLinear`, GELU fused into each MLP's first. Every other parameter is
    shared with ``model``, not copied; ``model`` itself is unchanged."""
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    packed = copy.deepcopy(model, shared)
    for module in packed.modules():
        if isinstance(module, Attention):
            module.qkv, module.proj = PackedLinear(module.qkv, dtype), PackedLinear(module.proj, dtype)
        elif isinstance(module, Mlp):
            fuse = isinstance(module.act, nn.GELU) and module.act.approximate == "none"
            module.fc1 = PackedLinear(module.fc1, dtype, gelu=fuse)
            module.act = nn.Identity() if fuse else module.act
            module.fc2 = PackedLinear(module.fc2, dtype)
    return packed.eval()
