"""Model names → configs (paper Table 1 and the later Ti/S sizes), in timm's naming convention.

``vit_{size}_patch{P}_{resolution}`` for plain ViTs, ``vit_{size}_r{50,26}_s{16,32}_{resolution}``
for hybrids, and big_vision-style short aliases such as ``"B/16"`` or ``"R50+B/16"``.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from .config import ViTConfig

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


def _build_registry() -> tuple[dict[str, ViTConfig], dict[str, str]]:
    configs: dict[str, ViTConfig] = {}
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


def get_config(name: str, **overrides: Any) -> ViTConfig:
    """The config registered as ``name`` (or alias), with ``overrides`` applied."""
    return _CONFIGS[resolve_name(name)].replace(**overrides)
