"""A ViT's shape as data: a frozen dataclass that round-trips through JSON exactly."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Self

from .embed import POS_EMBED_KINDS

POOLS = ("token", "avg")
INTERP_MODES = ("bicubic", "bilinear", "nearest", "area")
#: the ViTConfig fields that decide the shapes of the weights
ARCHITECTURE_FIELDS = frozenset(
    {
        "patch_size",
        "in_chans",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_dim",
        "qkv_bias",
        "pos_embed",
        "pool",
        "class_token",
        "hybrid_layers",
    }
)


def type_errors(instance: Any) -> list[str]:
    """What is of the wrong type in a dataclass instance (a config file can hold anything): each
    field is checked against its annotation; ints pass for floats, bools never pass for numbers."""
    hints = typing.get_type_hints(type(instance))
    problems = []
    for spec in dataclasses.fields(instance):
        value, kind = getattr(instance, spec.name), hints[spec.name]
        kinds = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
        if not any(_has_type(value, k) for k in kinds):
            wanted = " or ".join(getattr(k, "__name__", str(k)) for k in kinds)
            problems.append(f"{spec.name} must be {wanted}, got {value!r}")
    return problems


def _has_type(value: Any, kind: Any) -> bool:
    origin = typing.get_origin(kind) or kind
    if value is None or kind is type(None):
        return value is None and kind is type(None)
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, list | tuple) and all(_has_type(v, typing.get_args(kind)[0]) for v in value)
    if origin is Any:
        return True
    return isinstance(value, origin)


def to_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` → ``(224, 224)``; ``(h, w)`` stays as it is."""
    if isinstance(size, int):
        return (size, size)
    pair = tuple(int(s) for s in size)
    if len(pair) != 2:
        raise ValueError(f"an image size is an int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


class NetworkConfig:
    """What the frozen network configs share: changed copies, validated again, and plain JSON
    values (tuples as lists)."""

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again). Unknown fields are an error."""
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            kind = type(self).__name__
            raise TypeError(f"unknown {kind} field(s) {', '.join(unknown)}; known fields: {', '.join(names)}")
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls().replace(**data)


#: position embeddings in words (``describe``)
_POSITIONS = {
    "none": "no",
    "learn": "learned",
    "learn2d": "learned 2-D",
    "relative": "relative",
    "sincos2d": "2-D sin-cos",
}


@dataclass(frozen=True)
class ViTConfig(NetworkConfig):
    """Everything that defines a Vision Transformer; ``VisionTransformer(config)`` builds it.

    Sizes follow the paper's Table 1 names: ``embed_dim`` is D, ``depth`` is L, ``mlp_dim`` is
    the MLP size, ``num_heads`` the heads. ``img_size`` is (height, width) in pixels.
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    qkv_bias: bool = True
    #: "none" | "learn" (1-D, paper default) | "learn2d" | "relative" | "sincos2d" (App. D.4)
    pos_embed: str = "learn"
    #: how learned position embeddings are resampled to a new grid
    pos_embed_interp: str = "bicubic"
    #: "token" (the [class] token's output) or "avg" (global average pooling, App. D.3)
    pool: str = "token"
    class_token: bool = True
    #: hidden size of the pre-training head (Linear + tanh before the classifier); None = none
    representation_size: int | None = None
    dropout: float = 0.0
    attn_dropout: float = 0.0
    #: stochastic depth of the last block; block i gets drop_path * i / (depth - 1)
    drop_path: float = 0.0
    norm_eps: float = 1e-6
    #: ResNet stage depths of a hybrid's CNN stem, e.g. (3, 4, 9) for R50; () = plain ViT
    hybrid_layers: tuple[int, ...] = field(default=())
    #: accept any image size at run time, resampling position embeddings on the fly
    dynamic_img_size: bool = False
    #: pad the image on the right/bottom to a multiple of the patch size instead of refusing it
    dynamic_img_pad: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_size", to_pair(self.img_size))
        object.__setattr__(self, "hybrid_layers", tuple(int(n) for n in self.hybrid_layers))
        self._validate()

    def _validate(self) -> None:
        wrong = type_errors(self)
        if wrong:
            raise ValueError(f"ViTConfig: {wrong[0]}")
        # before anything divides by them or by sizes derived from them
        for name in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if min(self.img_size) < 1:
            raise ValueError(f"img_size must be a positive number of pixels, got {self.img_size}")
        if not 0 < self.norm_eps < math.inf:
            raise ValueError(
                f"norm_eps must be > 0 and finite (LayerNorm divides by sqrt(var + eps)), got {self.norm_eps}"
            )
        if self.pos_embed not in POS_EMBED_KINDS:
            raise ValueError(
                f"unknown position embedding {self.pos_embed!r}; choose one of {', '.join(POS_EMBED_KINDS)}"
            )
        if self.pool not in POOLS:
            raise ValueError(f"unknown pooling {self.pool!r}; choose one of {', '.join(POOLS)}")
        if self.pos_embed_interp not in INTERP_MODES:
            raise ValueError(
                f"unknown interpolation {self.pos_embed_interp!r}; choose one of {', '.join(INTERP_MODES)}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}; "
                f"pick a head count that divides it (e.g. {self.embed_dim // 64 or 1} heads of 64)"
            )
        if self.pos_embed == "learn2d" and self.embed_dim % 2:
            raise ValueError(f"pos_embed 'learn2d' needs an even embed_dim, got {self.embed_dim}")
        if self.pos_embed == "sincos2d" and self.embed_dim % 4:
            raise ValueError(f"pos_embed 'sincos2d' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool='token' needs the class token; set class_token=True or pool='avg'")
        if self.representation_size is not None and self.representation_size < 1:
            raise ValueError(f"representation_size must be a positive integer or None, got {self.representation_size}")
        if any(n < 1 for n in self.hybrid_layers):
            raise ValueError(f"hybrid_layers are ResNet stage depths >= 1, got {self.hybrid_layers}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no classifier), got {self.num_classes}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        stride = self.stride
        if any(s % stride for s in self.img_size):
            raise ValueError(
                f"image size {self.img_size} is not divisible by the patch size {stride}; "
                f"use a multiple of {stride} or set dynamic_img_pad=True"
            )

    @property
    def stride(self) -> int:
        """Pixels per token along each side: the patch size, times the CNN stride for hybrids."""
        cnn_stride = 4 * 2 ** (len(self.hybrid_layers) - 1) if self.hybrid_layers else 1
        return cnn_stride * self.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (rows, cols) at ``img_size``."""
        return (self.img_size[0] // self.stride, self.img_size[1] // self.stride)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def describe(self) -> str:
        """The architecture in words, e.g. ``6 blocks × 128 wide (4 heads, MLP 256), 7×7 px patches:
        16 tokens + class token at 28 px``, or ``...: 16 tokens at 28 px, relative positions,
        average pooling``."""
        tokens = self.grid[0] * self.grid[1]
        p = self.patch_size
        if self.hybrid_layers:
            patches = f"ResNet stages {'+'.join(map(str, self.hybrid_layers))}, {p}×{p} patches of its map"
        else:
            patches = f"{p}×{p} px patches"
        prefix = " + class token" if self.class_token else ""
        # the paper's default (learned 1-D positions, the class token's output) goes without saying
        variants = [f"{_POSITIONS[self.pos_embed]} positions"] if self.pos_embed != "learn" else []
        variants += ["average pooling"] if self.pool == "avg" else []
        return (
            f"{self.depth} blocks × {self.embed_dim} wide ({self.num_heads} heads, MLP {self.mlp_dim}), "
            f"{patches}: {tokens} tokens{prefix} at {self.img_size[0]} px" + "".join(f", {v}" for v in variants)
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViTConfig:
        return cls.from_dict(json.loads(text))
