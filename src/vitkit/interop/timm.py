"""timm's ViT state dicts ↔ vitkit's.

vitkit names its parameters as timm does, so plain ViTs differ in one key (timm's
``pos_embed`` is a bare parameter; vitkit's lives in a module). Hybrids also differ in the
names inside the ResNet stem. Two explicit rule tables, one per direction.
"""

from __future__ import annotations

from torch import Tensor

from .keys import rename_keys

_STAGE = r"patch_embed\.backbone\.stages\.(\d+)"

# (timm pattern, vitkit replacement), first match wins.
_TIMM_TO_VITKIT = [
    (r"^pos_embed$", "pos_embed.weight"),
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
    (r"^pos_embed\.weight$", "pos_embed"),
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
