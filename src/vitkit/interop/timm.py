"""timm's ViT state dicts ↔ vitkit's.

vitkit names its parameters as timm does, so a plain ViT's state dict is the same in both
(``load_state_dict`` takes either). Hybrids differ in the names inside the ResNet stem: two
explicit rule tables, one per direction.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..data.transforms import Preprocessing
from ..models import ModelConfig, ResNetV2Config, get_config
from .keys import rename_keys

_STAGE = r"patch_embed\.backbone\.stages\.(\d+)"

# (timm pattern, vitkit replacement), first match wins.
_TIMM_TO_VITKIT = [
    (r"^patch_embed\.backbone\.stem\.conv\.", "patch_embed.backbone.conv_root."),
    (r"^patch_embed\.backbone\.stem\.norm\.", "patch_embed.backbone.gn_root."),
    (rf"^{_STAGE}\.blocks\.(\d+)\.downsample\.conv\.", r"patch_embed.backbone.stages.\1.\2.proj.0."),
    (rf"^{_STAGE}\.blocks\.(\d+)\.downsample\.norm\.", r"patch_embed.backbone.stages.\1.\2.proj.1."),
    (rf"^{_STAGE}\.blocks\.(\d+)\.conv(\d)\.", r"patch_embed.backbone.stages.\1.\2.conv\3."),
    (rf"^{_STAGE}\.blocks\.(\d+)\.norm(\d)\.", r"patch_embed.backbone.stages.\1.\2.gn\3."),
]
# The hybrid's token projection sits one level deeper in vitkit (HybridEmbed.patch.proj).
_HYBRID_PROJ = (r"^patch_embed\.proj\.", "patch_embed.patch.proj.")

_VITKIT_TO_TIMM = [
    (r"^patch_embed\.patch\.proj\.", "patch_embed.proj."),
    (r"^patch_embed\.backbone\.conv_root\.", "patch_embed.backbone.stem.conv."),
    (r"^patch_embed\.backbone\.gn_root\.", "patch_embed.backbone.stem.norm."),
    (rf"^{_STAGE}\.(\d+)\.proj\.0\.", r"patch_embed.backbone.stages.\1.blocks.\2.downsample.conv."),
    (rf"^{_STAGE}\.(\d+)\.proj\.1\.", r"patch_embed.backbone.stages.\1.blocks.\2.downsample.norm."),
    (rf"^{_STAGE}\.(\d+)\.conv(\d)\.", r"patch_embed.backbone.stages.\1.blocks.\2.conv\3."),
    (rf"^{_STAGE}\.(\d+)\.gn(\d)\.", r"patch_embed.backbone.stages.\1.blocks.\2.norm\3."),
]


def is_timm_state(state: dict[str, Tensor]) -> bool:
    """timm's ViT layout: a bare ``pos_embed`` beside timm's block names."""
    return "pos_embed" in state and "blocks.0.attn.qkv.weight" in state


def timm_to_vitkit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a timm ViT state dict (plain or hybrid) to vitkit's names; values untouched."""
    hybrid = any(k.startswith("patch_embed.backbone.") for k in state)
    return rename_keys(state, ([_HYBRID_PROJ] if hybrid else []) + _TIMM_TO_VITKIT)


def vitkit_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a vitkit state dict to timm's names (the inverse of :func:`timm_to_vitkit`)."""
    return rename_keys(state, _VITKIT_TO_TIMM)


# timm model_args vitkit builds (value as timm means it), and those that change only initialisation or
# training-time regularisation, not what loaded weights compute; anything else is refused, not ignored.
_TIMM_ARGS = {"img_size", "in_chans", "num_classes", "global_pool", "class_token", "qkv_bias"}
_TIMM_TRAINING_ARGS = {
    "weight_init",
    "drop_rate",
    "pos_drop_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
}


def is_timm_config(document: dict[str, Any]) -> bool:
    """timm's hub ``config.json``: ``architecture`` + ``pretrained_cfg``."""
    return "architecture" in document and "pretrained_cfg" in document


def config_from_timm(document: dict[str, Any]) -> ModelConfig:
    """The config of a timm hub ``config.json`` (architecture, class count, input size): a ViT's,
    or a BiT ResNet's (``resnetv2_*_bit``)."""
    arch = document["architecture"]
    if not isinstance(arch, str):
        raise ValueError(f"config.json: architecture must be a timm model name, got {arch!r}")
    try:
        base = get_config(arch)
    except ValueError as error:
        raise ValueError(f"timm architecture {arch!r} is not one vitkit builds: {error}") from error
    args = _section(document, "model_args")
    unknown = sorted(set(args) - _TIMM_ARGS - _TIMM_TRAINING_ARGS)
    if unknown:
        raise ValueError(f"vitkit cannot build timm's {arch} with model_args {', '.join(unknown)}")
    cfg = _section(document, "pretrained_cfg")
    input_size = cfg.get("input_size", [base.in_chans, *base.img_size])
    if not (
        isinstance(input_size, list | tuple)
        and len(input_size) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in input_size)
    ):
        raise ValueError(
            f"config.json: pretrained_cfg.input_size must be [channels, height, width] in pixels, got {input_size!r}"
        )
    in_chans, *size = input_size
    sizes = {
        "img_size": args.get("img_size", tuple(size)),
        "in_chans": args.get("in_chans", in_chans),
        "num_classes": args.get("num_classes", document.get("num_classes", cfg.get("num_classes", 1000))),
    }
    pool = args.get("global_pool", document.get("global_pool", "avg" if isinstance(base, ResNetV2Config) else "token"))
    if isinstance(base, ResNetV2Config):
        if pool != "avg" or {"class_token", "qkv_bias"} & set(args):
            raise ValueError(f"vitkit builds timm's {arch} as BiT does: average pooling, no ViT arguments")
        return base.replace(**sizes)
    if pool not in ("token", "avg"):
        raise ValueError(f"vitkit has no global_pool {pool!r} (timm's {arch}); it pools by token or avg")
    return base.replace(
        **sizes,
        pool=pool,
        class_token=args.get("class_token", base.class_token),
        qkv_bias=args.get("qkv_bias", base.qkv_bias),
    )


def _section(document: dict[str, Any], name: str) -> dict[str, Any]:
    """``model_args`` or ``pretrained_cfg``: a JSON object, or absent."""
    section = document.get(name) or {}
    if not isinstance(section, dict):
        raise ValueError(f"config.json: {name} must be an object of settings, got {section!r}")
    return section


def preprocessing_from_timm(document: dict[str, Any], config: ModelConfig) -> Preprocessing:
    """timm's ``pretrained_cfg`` as a :class:`Preprocessing`: bicubic (by default) resize of the
    short side to ``floor(size / crop_pct)`` and a centre crop, or a squash (``crop_mode``)."""
    cfg = _section(document, "pretrained_cfg")
    options = {
        "interpolation": cfg.get("interpolation", "bicubic"),
        "mean": cfg.get("mean", (0.485, 0.456, 0.406)),  # timm's defaults: ImageNet statistics
        "std": cfg.get("std", (0.229, 0.224, 0.225)),
    }
    crop_mode = cfg.get("crop_mode", "center")
    if crop_mode == "squash":
        return Preprocessing(config.img_size, config.in_chans, **options)
    if crop_mode != "center":
        raise ValueError(f"timm's crop_mode {crop_mode!r} is not one vitkit applies (center, squash)")
    return Preprocessing.centre_crop(config.img_size, config.in_chans, cfg.get("crop_pct", 0.875), **options)


def timm_data_config(preprocessing: Preprocessing) -> dict[str, Any]:
    """A :class:`Preprocessing` in timm's ``pretrained_cfg`` keys (the inverse of
    :func:`preprocessing_from_timm`)."""
    crop = preprocessing.resize_shorter
    return {
        "mean": preprocessing.mean,
        "std": preprocessing.std,
        "interpolation": preprocessing.interpolation,
        "crop_pct": _crop_pct(min(preprocessing.img_size), crop) if crop else 1.0,
        "crop_mode": "center" if crop else "squash",
    }


def _crop_pct(size: int, resize_shorter: int) -> float:
    """The shortest decimal crop fraction that timm turns into this resize (``floor(size /
    crop_pct)``): 0.9 rather than 224/248 = 0.9032…, as the weights' own configs write it."""
    for digits in range(1, 7):
        fraction = round(size / resize_shorter, digits)
        if fraction > 0 and math.floor(size / fraction) == resize_shorter:
            return fraction
    return size / resize_shorter


def class_names_from_timm(document: dict[str, Any]) -> list[str] | None:
    """``label_names`` when the repo has them (ImageNet repos mostly do not: see the class-name tables)."""
    names = document.get("label_names")
    return list(names) if names else None
