"""Whether one training step's activations can fit in the device's memory, checked before the model
is resized to the training resolution: a large ``--img-size`` otherwise fails minutes later with an
allocation error (or the kernel's OOM killer) instead of a line that says why."""

from __future__ import annotations

import os

import torch

from ..decisions import tokens_of
from ..models import ViTConfig
from .config import ConfigError


def activation_bytes(
    config: ViTConfig,
    *,
    tokens: int,
    batch: int,
    bytes_per_value: int,
    attention_weights: bool,
    grad_checkpointing: bool,
) -> tuple[int, int]:
    """A lower bound on what autograd keeps for one training step of the encoder: ``(total,
    attention)`` bytes, ``attention`` being the part in softmax weights.

    Per block and token it keeps at least 6·D + 2·MLP values (the two LayerNorms' inputs and
    outputs, q, k and v, and the MLP's hidden layer before and after GELU), and with the explicit
    attention kernel (``attention_weights``, see :mod:`vitkit.models.vit`) the softmax weights,
    tokens² × heads; fused kernels keep O(tokens) there. With gradient checkpointing only each
    block's input stays, plus one block at a time. Weights, gradients, optimiser state and
    temporaries come on top, so a step that this exceeds cannot fit."""
    per_block = tokens * (6 * config.embed_dim + 2 * config.mlp_dim)
    attention = tokens * tokens * config.num_heads if attention_weights else 0
    if grad_checkpointing:
        blocks = config.depth * tokens * config.embed_dim + per_block + attention
        attention_blocks = 1
    else:
        blocks = config.depth * (per_block + attention)
        attention_blocks = config.depth
    return batch * blocks * bytes_per_value, batch * attention * attention_blocks * bytes_per_value


def device_memory_bytes(device: torch.device) -> int:
    """All the memory there is: the GPU's, or the machine's RAM (free or not: what is refused here
    cannot fit even on an idle machine)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_activations_fit(
    config: ViTConfig,
    *,
    img_size: int,
    batch: int,
    device: torch.device,
    precision: str,
    grad_checkpointing: bool,
    attention: str = "auto",
    visible_fraction: float = 1.0,
) -> None:
    """Refuse a training resolution whose activations (:func:`activation_bytes`) exceed the
    device's memory, with the estimate. ``attention`` is the run's kernel setting (its weights
    count only when it is "explicit": "auto" may choose the fused kernel, and this is a lower
    bound). ``visible_fraction`` is the share of patch tokens the encoder sees (a masked
    autoencoder's 1 - mask ratio)."""
    tokens = tokens_of(config, img_size, visible_fraction)
    need, attention_bytes = activation_bytes(
        config,
        tokens=tokens,
        batch=batch,
        bytes_per_value=2 if precision == "bf16" else 4,
        attention_weights=attention == "explicit",
        grad_checkpointing=grad_checkpointing,
    )
    have = device_memory_bytes(device)
    if need <= have:
        return
    attention_part = (
        f", {attention_bytes / 1e9:,.0f} GB of it attention weights "
        f"({tokens:,}² × {config.num_heads} heads × batch {batch})"
        if attention_bytes
        else ""
    )
    hint = "" if grad_checkpointing else ", or add --grad-checkpointing"
    raise ConfigError(
        f"--img-size {img_size} cannot fit: one training step keeps at least {need / 1e9:,.1f} GB of activations "
        f"({tokens:,} tokens × {config.depth} blocks × batch {batch}, {precision}{attention_part}), more than the "
        f"{have / 1e9:,.1f} GB of memory of this {device.type.upper()}; lower --img-size or --batch-size{hint}"
    )
