"""Drawing the §4.5 figures with matplotlib. Each function returns a ``Figure``; nothing is shown
on screen, so they work on headless machines. Images are model inputs in [-1, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from ..models.embed import Grid
from .compute import output_attention, patch_distances

HEAT = "inferno"


def _displayable(image: Tensor) -> Tensor:
    """A model input ``(C, H, W)`` in [-1, 1] → ``(H, W)`` or ``(H, W, 3)`` in [0, 1] for imshow."""
    image = (image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1)
    return image.permute(1, 2, 0) if image.shape[0] == 3 else image.mean(dim=0)


def _show(ax, picture: Tensor, **style) -> None:
    ax.imshow(picture.numpy(), **style)
    ax.set_xticks([])
    ax.set_yticks([])


def _upsample(grid_values: Tensor, size: tuple[int, int]) -> Tensor:
    """A non-negative per-patch map ``(rows, cols)`` → ``size`` pixels, smooth, divided by its
    maximum (not min-max stretched, so nearly even maps look even)."""
    picture = F.interpolate(grid_values[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return picture / picture.max().clamp_min(1e-12)


def attention_heads_figure(
    image: Tensor, attentions: list[Tensor], *, num_prefix_tokens: int, grid: Grid, pool: str = "token"
) -> Figure:
    """One image's attention in every layer (rows) and head (columns): where the class token
    looks, or under average pooling (``pool="avg"``) the mean over patch queries. ``attentions``
    hold this image's weights, each ``(heads, T, T)``."""
    layers, heads = len(attentions), attentions[0].shape[0]
    figure = Figure(figsize=(1.3 * (heads + 1), 1.3 * layers + 0.4), layout="constrained")
    axes = figure.subplots(layers, heads + 1, squeeze=False)
    picture = _displayable(image)
    for layer, weights in enumerate(attentions):
        maps = output_attention(weights, num_prefix_tokens=num_prefix_tokens, pool=pool)
        maps = maps.reshape(heads, *grid).float().cpu()
        _show(axes[layer, 0], picture, cmap="gray", vmin=0, vmax=1)
        axes[layer, 0].set_ylabel(f"layer {layer + 1}")
        for head in range(heads):
            _show(axes[layer, head + 1], maps[head], cmap=HEAT)
            if layer == 0:
                axes[0, head + 1].set_title(f"head {head + 1}", fontsize=9)
    who = "class token" if pool == "token" else "mean of the patch queries"
    figure.suptitle(f"Attention of the {who} over the patches, per layer and head", fontsize=10)
    return figure


def explanations_figure(images: Tensor, maps: dict[str, Tensor], captions: list[str]) -> Figure:
    """Images (top row, each titled with ``captions[i]``, e.g. the class explained) and, below,
    one row per explanation method: its map ``(B, rows, cols)`` as a heat map over the image."""
    count, rows = images.shape[0], len(maps) + 1
    figure = Figure(figsize=(1.8 * count, 1.9 * rows + 0.3), layout="constrained")
    axes = figure.subplots(rows, count, squeeze=False)
    for index in range(count):
        picture = _displayable(images[index])
        style = {"cmap": "gray", "vmin": 0, "vmax": 1} if picture.ndim == 2 else {}
        _show(axes[0, index], picture, **style)
        axes[0, index].set_title(captions[index], fontsize=8)
        for row, values in enumerate(maps.values(), start=1):
            _show(axes[row, index], picture, **style)
            heat = _upsample(values[index], tuple(images.shape[-2:]))
            axes[row, index].imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    axes[0, 0].set_ylabel("input")
    for row, method in enumerate(maps, start=1):
        axes[row, 0].set_ylabel(method)
    figure.suptitle("Why the model answered: each method's map over the image", fontsize=10)
    return figure


def attention_distance_figure(distances: Tensor, *, grid: Grid, patch_pixels: int) -> Figure:
    """Mean attention distance per head (dots) against depth, as Fig. 7 (right) / Fig. 11. The
    dashed line is what a head attending uniformly to every patch would score."""
    layers, heads = distances.shape
    figure = Figure(figsize=(5.5, 4), layout="constrained")
    ax = figure.subplots()
    depth = torch.arange(1, layers + 1).repeat_interleave(heads)
    head = torch.arange(1, heads + 1).repeat(layers)
    scatter = ax.scatter(
        depth.numpy(),
        distances.flatten().cpu().numpy(),
        c=head.numpy(),
        cmap=colormaps["viridis"].resampled(heads),
        vmin=0.5,
        vmax=heads + 0.5,
        s=22,
    )
    uniform = patch_distances(grid, patch_pixels).mean().item()
    ax.axhline(uniform, linestyle="--", color="gray", linewidth=1, label="uniform attention")
    if heads > 1:
        colorbar = figure.colorbar(scatter, ax=ax, label="head")
        colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="network depth (layer)",
        ylabel="mean attention distance (pixels)",
        ylim=(0, max(uniform, distances.max().item()) * 1.1 + 1e-6),
        title="Mean attention distance per head",
    )
    ax.set_xticks(range(1, layers + 1))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return figure


def pos_embed_similarity_figure(similarity: Tensor) -> Figure:
    """Cosine similarity of each patch's position embedding with all others (Fig. 7 centre):
    one small map per patch, laid out like the patch grid."""
    rows, cols = similarity.shape[:2]
    size = min(9.0, 0.75 * max(rows, cols) + 1.5)
    figure = Figure(figsize=(size * cols / max(rows, cols) + 0.8, size * rows / max(rows, cols)), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    image = None
    for row in range(rows):
        for col in range(cols):
            image = axes[row, col].imshow(similarity[row, col].cpu().numpy(), cmap="viridis", vmin=-1, vmax=1)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == rows - 1:
                axes[row, col].set_xlabel(str(col + 1), fontsize=8)
            if col == 0:
                axes[row, col].set_ylabel(str(row + 1), fontsize=8)
    figure.supxlabel("input patch column", fontsize=9)
    figure.supylabel("input patch row", fontsize=9)
    figure.colorbar(image, ax=axes, label="cosine similarity", shrink=0.8)
    figure.suptitle("Position-embedding similarity", fontsize=10)
    return figure


def embedding_filters_figure(components: Tensor, explained: Tensor) -> Figure:
    """The principal components of the patch-embedding filters (Fig. 7 left), each scaled to
    the full grey/colour range on its own (their sign is arbitrary)."""
    count = components.shape[0]
    cols = min(7, count)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(1.3 * cols, 1.45 * rows + 0.4), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for index in range(count):
        component = components[index].float().cpu()
        component = (component - component.min()) / (component.max() - component.min()).clamp_min(1e-12)
        picture = component.permute(1, 2, 0) if component.shape[0] == 3 else component.mean(dim=0)
        ax = axes.flat[index]
        ax.imshow(picture.numpy(), cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"PC {index + 1}: {100 * explained[index].item():.1f}%", fontsize=7)
    figure.suptitle("Principal components of the patch-embedding filters", fontsize=10)
    return figure
