"""``vitkit convert``: any readable source → a vitkit folder, a timm state dict, a transformers
folder or a Google ``.npz``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..fileio import atomic_write
from ..models import ResNetV2Config
from .folder import save_model
from .hf import save_hf
from .npz import save_npz
from .sources import open_weights
from .timm import vitkit_to_timm

logger = logging.getLogger(__name__)

TARGETS = ("vitkit", "timm", "hf", "npz")
#: the position embeddings timm's VisionTransformer can hold
TIMM_POS_EMBEDS = ("learn", "none")


def _is_bare_weight_file(src: str | Path) -> bool:
    path = Path(src)
    return path.is_file() and path.suffix.lower() != ".npz"


def convert(
    src: str | Path,
    dst: str | Path,
    *,
    to: str,
    architecture: str | None = None,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the model in ``src`` (anything :func:`vitkit.open_weights` reads; a bare weight file
    needs its ``architecture``, a model name such as ``"S/16"``) to ``dst`` in the ``to`` format: ``vitkit`` (folder),
    ``timm`` (a ``.safetensors`` state dict with timm's names), ``hf`` (a folder for transformers'
    ``from_pretrained`` and ``pipeline``, with a model card listing ``metrics``) or ``npz``
    (vit_jax layout). An existing ``dst`` (a file, or a folder that is not empty: a run's model,
    say) is left alone unless ``overwrite``."""
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; choose one of {', '.join(TARGETS)}")
    if architecture and not _is_bare_weight_file(src):
        raise ValueError(
            f"--architecture names the architecture of a bare weight file; {src} carries its own: drop --architecture"
        )
    target = Path(dst)
    if not overwrite and (target.is_file() or (target.is_dir() and any(target.iterdir()))):
        raise ValueError(f"{dst} already exists and holds files; choose another destination or pass --force")
    weights = open_weights(src, architecture=architecture)
    if weights.decoder_config is not None:
        raise ValueError(
            f"{src} is a segmenter: vitkit convert writes classifiers and encoders; export it with vitkit export "
            "(ONNX, torch.export), or use its folder as it is"
        )
    if to in ("hf", "npz") and isinstance(weights.config, ResNetV2Config):
        raise ValueError(
            f"{src} is a BiT ResNet: transformers' ViT classes and Google's ViT .npz layout hold ViTs; "
            "convert it --to timm (timm's resnetv2_*_bit) or --to vitkit"
        )
    if to == "timm" and getattr(weights.config, "pos_embed", "learn") not in TIMM_POS_EMBEDS:
        raise ValueError(
            f"timm's VisionTransformer has learned 1-D position embeddings or none; {src} has "
            f"pos_embed={weights.config.pos_embed!r}, which it cannot hold: convert it --to vitkit"
        )
    model = weights.build_model()
    dst = Path(dst)
    if to == "vitkit":
        return save_model(
            dst,
            model,
            class_names=weights.class_names,
            model_name=weights.model_name,
            preprocessing=weights.preprocessing,
            threshold=weights.threshold,
        )
    if to == "hf":
        return save_hf(
            dst,
            model,
            weights.class_names,
            preprocessing=weights.preprocessing,
            metrics=metrics,
            threshold=weights.threshold,
        )
    if weights.threshold is not None and to in ("npz", "timm"):
        logger.warning(
            f"{src} is a multi-label model (a sigmoid per class, threshold {weights.threshold:g}); a {to} file "
            "cannot record that: whoever loads it must apply the sigmoid and threshold themselves"
        )
    if to == "npz":
        if dst.suffix != ".npz":
            raise ValueError(f"a Google checkpoint is written as one .npz file; got {dst}")
        return save_npz(dst, model.state_dict(), model.config.num_heads)
    if dst.suffix != ".safetensors":
        raise ValueError(f"a timm state dict is written as one .safetensors file; got {dst}")
    state = vitkit_to_timm({k: v.detach().contiguous() for k, v in model.state_dict().items()})
    atomic_write(dst, lambda tmp: save_file(state, str(tmp)))
    return dst
