"""The numbers behind the paper's §4.5 "Inspecting Vision Transformer" figures.

Everything here takes a model or its attention weights and returns tensors; drawing lives in
``plots.py``. A figure that does not apply to a model (a hybrid has no patch filters to show, a
model without learned position embeddings has none to compare) raises :class:`NotApplicable`
with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import VisionTransformer
from ..models.embed import Grid, PatchEmbed


class NotApplicable(ValueError):
    """The analysis does not apply to this model; the message says why."""


@torch.inference_mode()
def attention_maps(model: VisionTransformer, images: Tensor) -> list[Tensor]:
    """Softmax attention of every layer, each ``(B, heads, T, T)`` in fp32, for preprocessed
    ``images`` ``(B, C, H, W)``. The model keeps its fused attention; only this call takes the
    explicit path."""
    device = next(model.parameters()).device
    return [weights.float() for weights in model.attention_maps(images.to(device))]


def attention_rollout(
    attentions: Sequence[Tensor], *, num_prefix_tokens: int, grid: Grid, pool: str = "token"
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020; paper Fig. 6, App. D.8) over patches, ``(B, rows, cols)``.

    Per layer the heads are averaged, the identity is added for the residual connection and the
    rows are re-normalised; the layers are then multiplied, first layer rightmost. What is
    returned is how much the model's output attends to each input patch: the class token's row
    (``pool="token"``), or with global average pooling (``pool="avg"``) the mean of the patch
    tokens' rows.
    """
    rollout = None
    for weights in attentions:
        mixed = weights.float().mean(dim=1)
        mixed = mixed + torch.eye(mixed.shape[-1], device=mixed.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    if rollout is None:
        raise ValueError("attention rollout needs the attention of at least one layer")
    return output_attention(rollout, num_prefix_tokens=num_prefix_tokens, pool=pool).reshape(-1, *grid)


def output_attention(weights: Tensor, *, num_prefix_tokens: int, pool: str) -> Tensor:
    """The rows of ``weights`` ``(..., T, T)`` that make the model's output — the class token's,
    or the mean of the patch tokens' under average pooling — restricted to the patch columns."""
    rows = weights[..., 0, :] if pool == "token" else weights[..., num_prefix_tokens:, :].mean(dim=-2)
    return rows[..., num_prefix_tokens:]


def patch_distances(grid: Grid, patch_pixels: int) -> Tensor:
    """Euclidean distances in pixels between the centres of every pair of patches, ``(N, N)``."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_pixels
    return torch.cdist(centres, centres)


def mean_attention_distance(
    attentions: Sequence[Tensor], *, num_prefix_tokens: int, grid: Grid, patch_pixels: int
) -> Tensor:
    """Mean attention distance (paper Fig. 7 right, Fig. 11), ``(layers, heads)`` in pixels.

    For each patch query, the distance to every patch key weighted by the attention between
    them, averaged over queries and images. Attention to prefix tokens (the class token) has no
    place in the image, so it is left out and the patch weights re-normalised to sum to one.
    """
    distances = patch_distances(grid, patch_pixels)
    per_layer = []
    for weights in attentions:
        patches = weights.float()[:, :, num_prefix_tokens:, num_prefix_tokens:]
        patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        per_query = (patches * distances.to(patches.device)).sum(dim=-1)  # (B, heads, N)
        per_layer.append(per_query.mean(dim=(0, 2)))
    return torch.stack(per_layer)


@torch.no_grad()
def pos_embed_similarity(model: VisionTransformer) -> Tensor:
    """Cosine similarity between the position embedding of each patch and those of all others
    (paper Fig. 7 centre, Fig. 10), ``(rows, cols, rows, cols)``: entry ``[i, j]`` is the map for
    the patch in row i, column j."""
    config = model.config
    table = model.position_table()
    if table is None:
        reason = (
            "relative position embeddings live in the attention and have no per-patch vector"
            if config.pos_embed == "relative"
            else "the model has no position embeddings"
        )
        raise NotApplicable(f"position-embedding similarity does not apply: {reason} (pos_embed={config.pos_embed!r})")
    unit = F.normalize(table.float(), dim=-1)
    rows, cols = config.grid
    return (unit @ unit.T).reshape(rows, cols, rows, cols)


@torch.no_grad()
def embedding_filters(model: VisionTransformer, count: int = 28) -> tuple[Tensor, Tensor]:
    """The top principal components of the patch-embedding filters (paper Fig. 7 left).

    Each of the D filters is a ``C × P × P`` image; they are centred and decomposed (SVD). Returns
    the components ``(k, C, P, P)``, strongest first, and the fraction of the filters' variance
    each explains ``(k,)``; ``k = min(count, C·P·P, D)``.
    """
    if not isinstance(model.patch_embed, PatchEmbed):
        raise NotApplicable(
            "embedding filters do not apply to a hybrid: its patch embedding is a 1×1 projection of "
            "ResNet features, not filters on pixels"
        )
    weight = model.patch_embed.proj.weight.float()  # (D, C, P, P)
    filters = weight.flatten(1)
    centred = filters - filters.mean(dim=0, keepdim=True)
    _, singular, components = torch.linalg.svd(centred, full_matrices=False)
    variance = singular.square()
    k = min(count, components.shape[0])
    return components[:k].reshape(k, *weight.shape[1:]), (variance / variance.sum())[:k]
