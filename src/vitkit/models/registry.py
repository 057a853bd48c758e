"""Model names → configs (paper Table 1 and the later Ti/S sizes), in timm's naming convention.

``vit_{size}_patch{P}_{resolution}`` for plain ViTs, ``vit_{size}_r{50,26}_s{16,32}_{resolution}``
for hybrids, ``resnetv2_{depth}x{width}_bit`` for the BiT ResNets the paper compares with (plus
``resnetv2_{tiny,small}_bit``, narrow ones sized for a CPU), and big_vision-style short aliases
such as ``"B/16"``, ``"R50+B/16"`` or ``"BiT-R50x1"``.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from .config import ViTConfig
from .resnet import ResNetV2Config

# size: (embed_dim D, depth L, mlp_dim M, num_heads)
_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 768, 3),
    "small": (384, 12, 1536, 6),
    "base": (768, 12, 3072, 12),
    "large": (1024, 24, 4096, 16),
    "huge": (1280, 32, 5120, 16),
}
_SHORT = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}

# The (size, patch, resolutions) combinations in common use.
_PLAIN = [
    ("tiny", 16, (224, 384)),
    ("small", 32, (224, 384)),
    ("small", 16, (224, 384)),
    ("small", 8, (224,)),
    ("base", 32, (224, 384)),
    ("base", 16, (224, 384)),
    ("base", 8, (224,)),
    ("large", 32, (224, 384)),
    ("large", 16, (224, 384)),
    ("large", 14, (224,)),
    ("huge", 14, (224,)),
]
# Hybrids: (size, ResNet name, stage depths, output stride, resolutions); 1×1 patches on the map.
_HYBRID = [
    ("base", "r50", (3, 4, 9), 16, (224, 384)),
    ("small", "r26", (2, 2, 2, 2), 32, (224, 384)),
]

# BiT ResNet-v2s: name → (stage depths, width factor, root width); the paper's Figures 3-5 use
# R50x1 to R152x4. The two narrow ones are for small images on a CPU: at 28 px the small one costs
# about what the main job's 6-block ViT does.
_BIT_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_BIT = {
    **{
        f"resnetv2_{depth}x{width}_bit": (_BIT_DEPTHS[depth], width, 64)
        for depth, width in ((50, 1), (50, 3), (101, 1), (101, 3), (152, 2), (152, 4))
    },
    "resnetv2_tiny_bit": ((1, 1, 1, 1), 1, 32),
    "resnetv2_small_bit": ((2, 2, 2, 2), 1, 32),
}
ModelConfig = ViTConfig | ResNetV2Config


def _build_registry() -> tuple[dict[str, ModelConfig], dict[str, str]]:
    configs: dict[str, ModelConfig] = {}
    aliases: dict[str, str] = {}
    for size, patch, resolutions in _PLAIN:
        dim, depth, mlp, heads = _SIZES[size]
        for res in resolutions:
            name = f"vit_{size}_patch{patch}_{res}"
            configs[name] = ViTConfig(
                img_size=res, patch_size=patch, embed_dim=dim, depth=depth, mlp_dim=mlp, num_heads=heads
            )
        aliases[f"{_SHORT[size]}/{patch}"] = f"vit_{size}_patch{patch}_{resolutions[0]}"
    for size, resnet, layers, stride, resolutions in _HYBRID:
        dim, depth, mlp, heads = _SIZES[size]
        for res in resolutions:
            name = f"vit_{size}_{resnet}_s{stride}_{res}"
            configs[name] = ViTConfig(
                img_size=res,
                patch_size=1,
                embed_dim=dim,
                depth=depth,
                mlp_dim=mlp,
                num_heads=heads,
                hybrid_layers=layers,
            )
        aliases[f"{resnet.upper()}+{_SHORT[size]}/{stride}"] = f"vit_{size}_{resnet}_s{stride}_{resolutions[0]}"
    for name, (layers, width, root) in _BIT.items():
        configs[name] = ResNetV2Config(layers=layers, width_factor=width, root_width=root)
        short = name.removeprefix("resnetv2_").removesuffix("_bit")
        aliases[f"BiT-{short.capitalize() if root != 64 else 'R' + short}"] = name
    return configs, aliases


_CONFIGS, _ALIASES = _build_registry()
_ALIASES_LOWER = {alias.lower(): name for alias, name in _ALIASES.items()}


def list_models(pattern: str | None = None, *, aliases: bool = False) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell-style filter such as ``"*base*"``.
    With ``aliases=True`` the short names (``"B/16"``, ...) are listed instead."""
    names = sorted(_ALIASES) if aliases else sorted(_CONFIGS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def resolve_name(name: str) -> str:
    """The registered name for ``name`` or an alias of it (aliases are case-insensitive)."""
    if name in _CONFIGS:
        return name
    if name.lower() in _ALIASES_LOWER:
        return _ALIASES_LOWER[name.lower()]
    candidates = list(_CONFIGS) + list(_ALIASES)
    close = difflib.get_close_matches(name, candidates, n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown model {name!r}; {hint}vitkit.list_models() lists them all")


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The config registered as ``name`` (or alias), with ``overrides`` applied: a
    :class:`ViTConfig`, or a :class:`ResNetV2Config` for the BiT ResNets."""
    return _CONFIGS[resolve_name(name)].replace(**overrides)
