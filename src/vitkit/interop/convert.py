"""``vitkit convert``: any readable source → a vitkit folder, a timm state dict or a transformers folder."""

from __future__ import annotations

import math
from pathlib import Path

from safetensors.torch import save_file

from ..fileio import atomic_write
from ..models import VisionTransformer, create_model, get_config
from .adapt import load_state_into
from .folder import load_model, save_model
from .formats import read_vitkit_state
from .hf import save_hf
from .npz import save_npz
from .timm import vitkit_to_timm

TARGETS = ("vitkit", "timm", "hf", "npz")


def _model_from_file(path: Path, model_name: str | None) -> VisionTransformer:
    """A bare weight file carries no architecture: take it from ``model_name``, and the class
    count and resolution from the tensors themselves."""
    if not model_name:
        raise ValueError(f"{path} is a bare weight file with no architecture in it; name one with --model (e.g. S/16)")
    state = read_vitkit_state(path)
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    config = get_config(model_name)
    overrides = {}
    if "pos_embed.weight" in state:
        side = math.isqrt(state["pos_embed.weight"].shape[1] - config.num_prefix_tokens)
        overrides["img_size"] = side * config.stride
    model = create_model(model_name, num_classes=num_classes, **overrides)
    load_state_into(model, state)
    return model


def convert(src: str | Path, dst: str | Path, *, to: str, model_name: str | None = None) -> Path:
    """Write the model in ``src`` (a vitkit or transformers folder, or a weight file with
    ``model_name``) to ``dst`` in the ``to`` format: ``vitkit`` (folder), ``timm`` (a
    ``.safetensors`` state dict with timm's names), ``hf`` (a folder for
    ``ViTForImageClassification.from_pretrained``) or ``npz`` (vit_jax layout)."""
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        model, _, class_names = load_model(src)
    else:
        model, class_names = _model_from_file(src, model_name), None
    if to == "vitkit":
        return save_model(dst, model, class_names=class_names, model_name=model_name)
    if to == "hf":
        return save_hf(dst, model, class_names)
    if to == "npz":
        if dst.suffix != ".npz":
            raise ValueError(f"a Google checkpoint is written as one .npz file; got {dst}")
        return save_npz(dst, model.state_dict(), model.config.num_heads)
    if dst.suffix != ".safetensors":
        raise ValueError(f"a timm state dict is written as one .safetensors file; got {dst}")
    weights = vitkit_to_timm({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    atomic_write(dst, lambda tmp: save_file(weights, str(tmp)))
    return dst
