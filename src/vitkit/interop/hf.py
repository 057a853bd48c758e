"""Hugging Face ``transformers`` ViT folders (``config.json`` + ``model.safetensors``) ↔ vitkit.

Files written by ``save_pretrained`` use the ``vit.encoder.layer.{i}.attention.attention.query``
layout; the separate q, k and v projections become vitkit's fused ``qkv`` (stacked in that
order). ``layer_norm_eps`` (1e-12 by default in transformers) is carried into the config.
``ViTForImageClassification`` classifies the class token's normalised output and does not use
the pooler, so the pooler (Linear + tanh, the paper's pre-logits) is kept only when asked. A multi-label model
is written with ``problem_type: "multi_label_classification"`` (transformers then trains it with
binary cross-entropy, and its pipeline applies a sigmoid) and vitkit's decision ``threshold``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..data.transforms import Preprocessing, eval_transform
from ..fileio import atomic_write
from ..models import VisionTransformer, ViTConfig
from .folder import MULTI_LABEL
from .keys import rename_key

logger = logging.getLogger(__name__)

_LAYER = r"^vit\.encoder\.layer\.(\d+)\."
_RENAMES = [
    (r"^vit\.embeddings\.cls_token$", "cls_token"),
    (r"^vit\.embeddings\.position_embeddings$", "pos_embed"),
    (r"^vit\.embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (_LAYER + r"layernorm_before\.", r"blocks.\1.norm1."),
    (_LAYER + r"layernorm_after\.", r"blocks.\1.norm2."),
    (_LAYER + r"attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (_LAYER + r"intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (_LAYER + r"output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^vit\.layernorm\.", "norm."),
    (r"^vit\.pooler\.dense\.", "pre_logits.0."),
    (r"^classifier\.", "head."),
]
_QKV = re.compile(_LAYER + r"attention\.attention\.(query|key|value)\.(weight|bias)$")


def is_hf_config(document: dict[str, Any]) -> bool:
    return document.get("model_type") == "vit"


_REQUIRED = object()


def _number(
    document: dict[str, Any], name: str, default: Any = _REQUIRED, *, kind: type = int, minimum: float = 1
) -> Any:
    """``config.json``'s ``name``, checked: present unless it has a default, of ``kind`` (an int
    passes for a float; a bool for neither), at least ``minimum``."""
    if name not in document:
        if default is _REQUIRED:
            raise ValueError(f"config.json has no {name}; transformers' ViTConfig writes it")
        return default
    value = document[name]
    if not isinstance(value, int | kind) or isinstance(value, bool) or not value >= minimum:
        wanted = "an integer" if kind is int else "a number"
        raise ValueError(f"config.json: {name} must be {wanted} ≥ {minimum:g}, got {value!r}")
    return value


def _image_size(document: dict[str, Any]) -> int | tuple[int, int]:
    """``image_size``: an int, or (height, width) as transformers also accepts."""
    size = document.get("image_size", 224)
    if isinstance(size, list | tuple) and len(size) == 2:
        return tuple(_number({"image_size": side}, "image_size") for side in size)  # type: ignore[return-value]
    return _number({"image_size": size}, "image_size")


def _labels(document: dict[str, Any]) -> dict[str, Any]:
    labels = document.get("id2label") or {}
    if not isinstance(labels, dict):
        raise ValueError(
            f'config.json: id2label must map class indices to names ({{"0": "cat", ...}}), '
            f"got a {type(labels).__name__}"
        )
    return labels


def config_from_hf(document: dict[str, Any], *, keep_pooler: bool = False, classifier: bool = True) -> ViTConfig:
    """A :class:`ViTConfig` equal to a transformers ``ViTConfig`` dict (``classifier=False`` for
    a bare ViTModel, which has no classification head). A field that is missing or of the wrong
    kind is an error naming it."""
    if document.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {document['hidden_act']!r} is not supported; vitkit's MLP uses exact GELU")
    labels = _labels(document)
    hidden_size = _number(document, "hidden_size")
    qkv_bias = document.get("qkv_bias", True)
    if not isinstance(qkv_bias, bool):
        raise ValueError(f"config.json: qkv_bias must be true or false, got {qkv_bias!r}")
    return ViTConfig(
        img_size=_image_size(document),
        patch_size=_number(document, "patch_size", 16),
        in_chans=_number(document, "num_channels", 3),
        num_classes=(len(labels) if labels else _number(document, "num_labels", 2, minimum=0)) if classifier else 0,
        embed_dim=hidden_size,
        depth=_number(document, "num_hidden_layers"),
        num_heads=_number(document, "num_attention_heads"),
        mlp_dim=_number(document, "intermediate_size"),
        qkv_bias=qkv_bias,
        norm_eps=_number(document, "layer_norm_eps", 1e-12, kind=float, minimum=0),
        representation_size=_number(document, "pooler_output_size", hidden_size) if keep_pooler else None,
    )


def class_names_from_hf(document: dict[str, Any]) -> list[str]:
    labels = _labels(document)
    return [labels.get(str(i), labels.get(i, str(i))) for i in range(len(labels))]


def is_hf_state(state: dict[str, Tensor]) -> bool:
    """transformers' layout: ViTForImageClassification (``vit.`` prefix) or a bare ViTModel."""
    return "vit.embeddings.cls_token" in state or "embeddings.cls_token" in state


def hf_to_vitkit(state: dict[str, Tensor], *, keep_pooler: bool = False) -> dict[str, Tensor]:
    """Rename a transformers ViT state dict to vitkit's keys, fusing q, k and v."""
    if "embeddings.cls_token" in state:  # a bare ViTModel: same names without the "vit." prefix
        state = {f"vit.{k}": v for k, v in state.items()}
    converted: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _QKV.match(key)
        if match:
            layer, which, kind = match.groups()
            parts.setdefault((layer, kind), {})[which] = value
            continue
        if key.startswith("vit.pooler.") and not keep_pooler:
            continue
        converted[rename_key(key, _RENAMES)] = value
    for (layer, kind), qkv in parts.items():
        missing = [which for which in ("query", "key", "value") if which not in qkv]
        if missing:  # vitkit fuses the three: one alone cannot load
            raise ValueError(
                f"the weights have no vit.encoder.layer.{layer}.attention.attention.{missing[0]}.{kind} beside "
                f"its {', '.join(sorted(qkv))}; the file is damaged or not a ViT's"
            )
        converted[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv["query"], qkv["key"], qkv["value"]])
    return converted


def vitkit_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """vitkit keys → the layout ``save_pretrained`` writes (q, k, v split again)."""
    converted: dict[str, Tensor] = {}
    inverse = [
        (r"^cls_token$", "vit.embeddings.cls_token"),
        (r"^pos_embed$", "vit.embeddings.position_embeddings"),
        (r"^patch_embed\.proj\.", "vit.embeddings.patch_embeddings.projection."),
        (r"^blocks\.(\d+)\.norm1\.", r"vit.encoder.layer.\1.layernorm_before."),
        (r"^blocks\.(\d+)\.norm2\.", r"vit.encoder.layer.\1.layernorm_after."),
        (r"^blocks\.(\d+)\.attn\.proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
        (r"^blocks\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
        (r"^blocks\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
        (r"^norm\.", "vit.layernorm."),
        (r"^pre_logits\.0\.", "vit.pooler.dense."),
        (r"^head\.", "classifier."),
    ]
    for key, value in state.items():
        match = re.match(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", key)
        if match:
            layer, kind = match.groups()
            for name, chunk in zip(("query", "key", "value"), value.chunk(3), strict=True):
                converted[f"vit.encoder.layer.{layer}.attention.attention.{name}.{kind}"] = chunk.contiguous()
            continue
        converted[rename_key(key, inverse)] = value.contiguous()
    return converted


def hf_config_document(config: ViTConfig, class_names: list[str], threshold: float | None = None) -> dict[str, Any]:
    """The ``config.json`` transformers needs to rebuild ``config`` as ViTForImageClassification;
    with a ``threshold``, as a multi-label classifier."""
    if config.pos_embed != "learn" or config.pool != "token" or config.hybrid_layers or not config.class_token:
        raise ValueError(
            "transformers' ViT has learned 1-D position embeddings, a class token and no CNN stem; "
            f"this model (pos_embed={config.pos_embed!r}, pool={config.pool!r}, hybrid={bool(config.hybrid_layers)}) "
            "cannot be written as one"
        )
    if config.representation_size:
        raise ValueError(
            "ViTForImageClassification classifies without the pre-logits layer this model has; "
            "re-head it first (model.reset_classifier(...))"
        )
    if config.img_size[0] != config.img_size[1]:
        raise ValueError(f"transformers' ViTConfig takes a square image_size; this model is {config.img_size}")
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "layer_norm_eps": config.norm_eps,
        "image_size": config.img_size[0],
        "patch_size": config.patch_size,
        "num_channels": config.in_chans,
        "qkv_bias": config.qkv_bias,
        "id2label": {str(i): name for i, name in enumerate(class_names)},
        "label2id": {name: i for i, name in enumerate(class_names)},
        **({"problem_type": MULTI_LABEL, "threshold": threshold} if threshold is not None else {}),
    }


# PIL's resampling codes, which transformers' preprocessor_config.json stores
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def preprocessing_from_hf(document: dict[str, Any] | None, config: ViTConfig) -> Preprocessing:
    """A ``preprocessor_config.json`` as a :class:`Preprocessing`; without one, ViTImageProcessor's
    defaults (bilinear squash to the model's size, mean = std = 0.5)."""
    document = document or {}
    resample = document.get("resample", 2)
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"preprocessor_config.json resamples with PIL code {resample}; vitkit applies 2 or 3")
    normalize = document.get("do_normalize", True)
    options = {
        "interpolation": _PIL_RESAMPLE[resample],
        "mean": document.get("image_mean", 0.5) if normalize else 0.0,
        "std": document.get("image_std", 0.5) if normalize else 1.0,
    }
    if not document.get("do_resize", True):
        raise ValueError("preprocessor_config.json does not resize; vitkit needs images at the model's size")
    size = document.get("size") or {"height": config.img_size[0], "width": config.img_size[1]}
    if "shortest_edge" in size:
        crop = document.get("crop_size", {}) if document.get("do_center_crop") else {}
        if not crop:
            raise ValueError("preprocessor_config.json resizes the short side without a centre crop; vitkit cannot")
        return Preprocessing(
            (crop["height"], crop["width"]), config.in_chans, resize_shorter=size["shortest_edge"], **options
        )
    return Preprocessing((size["height"], size["width"]), config.in_chans, **options)


def hf_preprocessor_document(preprocessing: Preprocessing) -> dict[str, Any]:
    """The ``preprocessor_config.json`` under which transformers' image processors do what
    ``preprocessing`` does: BitImageProcessor for short-side resize + centre crop,
    ViTImageProcessor for a squash."""
    height, width = preprocessing.img_size
    document: dict[str, Any] = {
        "do_resize": True,
        "resample": {v: k for k, v in _PIL_RESAMPLE.items()}[preprocessing.interpolation],
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(preprocessing.mean),
        "image_std": list(preprocessing.std),
        "do_convert_rgb": True,
    }
    if preprocessing.resize_shorter is None:
        return {"image_processor_type": "ViTImageProcessor", "size": {"height": height, "width": width}, **document}
    return {
        "image_processor_type": "BitImageProcessor",
        "size": {"shortest_edge": preprocessing.resize_shorter},
        "do_center_crop": True,
        "crop_size": {"height": height, "width": width},
        **document,
    }


def model_card(config: ViTConfig, class_names: list[str], metrics: dict[str, Any] | None, params: int) -> str:
    """A README.md for the hub: what the model is, how it expects its input, what it measured."""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags: [vision, image-classification, vit, vitkit]",
        "---",
        "",
        f"# ViT ({config.depth} blocks × {config.embed_dim} wide, {config.patch_size} px patches)",
        "",
        "A Vision Transformer (Dosovitskiy et al., ICLR 2021) written by vitkit in transformers' layout: "
        f"{params:,} parameters, {config.img_size[0]}×{config.img_size[1]} px, {config.in_chans} channel(s), "
        f"{len(class_names)} classes ({', '.join(class_names[:10])}{', …' if len(class_names) > 10 else ''}).",
        "",
        "```python",
        "from transformers import pipeline",
        'classify = pipeline("image-classification", model="PATH_OR_REPO")',
        "```",
    ]
    if metrics:
        lines += ["", "## Measured by the run that trained it", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in metrics.items()]
    return "\n".join(lines) + "\n"


def save_hf(
    folder: str | Path,
    model: VisionTransformer,
    class_names: list[str] | None = None,
    *,
    preprocessing: Preprocessing | None = None,
    metrics: dict[str, Any] | None = None,
    threshold: float | None = None,
) -> Path:
    """Write ``model`` as a transformers ViT folder: ``config.json`` + ``model.safetensors`` that
    ``ViTForImageClassification.from_pretrained(folder)`` loads, ``preprocessor_config.json`` so
    that ``pipeline("image-classification", model=folder)`` preprocesses as vitkit does, and a
    model card. A 1-channel model gets no ``preprocessor_config.json``: transformers' processors
    make every image RGB, so the pipeline cannot feed it (a warning says so). ``threshold`` makes
    it a multi-label classifier (see the module docstring)."""
    folder = Path(folder)
    config = model.config
    names = class_names or [str(i) for i in range(config.num_classes)]
    document = hf_config_document(config, names, threshold)
    preprocessing = preprocessing or eval_transform(config.img_size, config.in_chans)
    weights = vitkit_to_hf({k: v.detach().cpu() for k, v in model.state_dict().items()})
    atomic_write(folder / "model.safetensors", lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    atomic_write(folder / "config.json", lambda tmp: tmp.write_text(json.dumps(document, indent=2)))
    if config.in_chans == 3:
        processor = json.dumps(hf_preprocessor_document(preprocessing), indent=2)
        atomic_write(folder / "preprocessor_config.json", lambda tmp: tmp.write_text(processor))
    else:
        logger.warning(
            f"{folder}: a {config.in_chans}-channel model has no preprocessor_config.json: transformers' image "
            "processors turn every image into RGB, so pipeline() cannot run it; ViTForImageClassification loads "
            "it and takes (B, 1, H, W) tensors scaled as vitkit's preprocessing does"
        )
    card = model_card(config, names, metrics, sum(p.numel() for p in model.parameters()))
    atomic_write(folder / "README.md", lambda tmp: tmp.write_text(card))
    return folder
