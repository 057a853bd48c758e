"""Turning an image into tokens: the patch embedding and the position-embedding kinds.

The paper's learned 1-D table is a bare parameter of the model (``pos_embed``, as timm names
it, so timm's state dicts load unchanged); :func:`resample_pos_embed` fits it to another grid.
The 2-D kinds here take the tokens ``(B, prefix + N, D)`` and the patch grid ``(rows, cols)``
they came from, so one model can run at any resolution. The ``relative`` kind of App. D.4 is
not additive; it lives in the attention (``RelativePositionLogits`` below).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Grid = tuple[int, int]


def is_symbolic(grid: Grid) -> bool:
    """True while ``torch.export`` traces a free image size: the grid is then symbolic, so the
    embeddings must always be resampled (comparing it with the stored grid would pin its value)."""
    return not all(isinstance(n, int) for n in grid)


POS_EMBED_KINDS = ("none", "learn", "learn2d", "relative", "sincos2d")


def lecun_normal_(weight: Tensor) -> None:
    """LeCun-normal initialisation as JAX draws it: a normal truncated at two standard deviations,
    rescaled so the result still has variance 1/fan_in."""
    std = math.sqrt(1.0 / weight[0].numel()) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)  # torch's bounds are absolute


class PatchEmbed(nn.Module):
    """Split an image into non-overlapping P×P patches and project each to D (paper eq. 1).

    A Conv2d with kernel = stride = P is exactly "flatten each patch, multiply by E".
    Returns tokens ``(B, N, D)`` in raster order and the grid ``(H/P, W/P)``.
    """

    def __init__(self, *, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """LeCun-normal projection, zero bias (the JAX reference)."""
        lecun_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Grid]:
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid


def resample_pos_embed(
    pos_embed: Tensor,
    new_grid: Grid,
    *,
    old_grid: Grid | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
) -> Tensor:
    """2-D interpolate learned position embeddings to a new patch grid (paper §3.2).

    Args:
        pos_embed: ``(1, num_prefix_tokens + rows * cols, D)``; the prefix rows (class token)
            are kept as they are, the rest is treated as a ``rows × cols`` image with D channels.
        new_grid: target ``(rows, cols)``; need not be square.
        old_grid: source ``(rows, cols)``; inferred as square when omitted.
        num_prefix_tokens: leading rows that belong to no patch.
        mode: any ``torch.nn.functional.interpolate`` mode for 2-D inputs
            (``"bicubic"``, ``"bilinear"``, ``"nearest"``, ``"area"``).
        antialias: low-pass filter when shrinking (bilinear/bicubic only).

    Returns the input itself when the grid does not change. Sampling positions are patch
    centres (``align_corners=False``): each embedding keeps its location in the image.
    """
    num_patches = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"cannot infer the grid of {num_patches} position embeddings: not a square; pass old_grid=(rows, cols)"
            )
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_patches:
        raise ValueError(
            f"old_grid {old_grid} holds {old_grid[0] * old_grid[1]} patches but the embedding "
            f"has {num_patches} patch rows (after {num_prefix_tokens} prefix rows)"
        )
    if not is_symbolic(new_grid):
        new_grid = (int(new_grid[0]), int(new_grid[1]))
        if tuple(old_grid) == new_grid:
            return pos_embed
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    image = patches.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    smooth = mode in ("bilinear", "bicubic")
    image = F.interpolate(
        image.float(),
        size=new_grid,
        mode=mode,
        align_corners=False if smooth else None,
        antialias=antialias and smooth,
    ).to(pos_embed.dtype)
    patches = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1)
    return torch.cat([prefix, patches], dim=1)


class Learned2dPosEmbed(nn.Module):
    """Separate learned row (Y) and column (X) embeddings of size D/2, concatenated per patch.

    Prefix tokens get no position: they are learned vectors already, so a learned offset
    would add nothing. Resizing resamples each table along its one axis.
    """

    def __init__(self, *, grid: Grid, embed_dim: int, num_prefix_tokens: int, interp: str) -> None:
        super().__init__()
        self.grid = grid
        self.num_prefix_tokens = num_prefix_tokens
        self.interp = interp
        self.row = nn.Parameter(torch.zeros(grid[0], embed_dim // 2))
        self.col = nn.Parameter(torch.zeros(grid[1], embed_dim // 2))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.row, std=0.02)
        nn.init.normal_(self.col, std=0.02)

    @staticmethod
    def _resize_table(table: Tensor, length: int, mode: str) -> Tensor:
        if not is_symbolic((length, 1)) and table.shape[0] == length:
            return table
        # A (n, d) table is a 1 × n "image" with d channels; interpolate along n only.
        resized = resample_pos_embed(
            table.unsqueeze(0), (1, length), old_grid=(1, table.shape[0]), num_prefix_tokens=0, mode=mode
        )
        return resized.squeeze(0)

    def _table(self, grid: Grid, mode: str) -> Tensor:
        rows = self._resize_table(self.row, grid[0], mode)
        cols = self._resize_table(self.col, grid[1], mode)
        return torch.cat(
            [rows[:, None, :].expand(-1, grid[1], -1), cols[None, :, :].expand(grid[0], -1, -1)], dim=-1
        ).flatten(0, 1)

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        pos = self._table(grid, self.interp)
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        return torch.cat([prefix, patches + pos], dim=1)

    def set_grid(self, grid: Grid, mode: str) -> None:
        with torch.no_grad():
            row = self._resize_table(self.row, grid[0], mode)
            col = self._resize_table(self.col, grid[1], mode)
        trainable = self.row.requires_grad
        self.row = nn.Parameter(row.clone(), requires_grad=trainable)
        self.col = nn.Parameter(col.clone(), requires_grad=trainable)
        self.grid = grid

    def patch_table(self) -> Tensor:
        """The embedding added to each patch, ``(rows * cols, D)`` in raster order."""
        return self._table(self.grid, self.interp)


def sincos_2d_table(grid: Grid, embed_dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine embeddings ``(rows * cols, D)``: D/4 frequencies each for
    sin(y), cos(y), sin(x), cos(x). D must be divisible by 4."""
    y, x = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(embed_dim // 4) / (embed_dim // 4))
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)


class SinCos2dPosEmbed(nn.Module):
    """Fixed (not learned) 2-D sine-cosine embeddings; prefix tokens get none."""

    def __init__(self, *, grid: Grid, embed_dim: int, num_prefix_tokens: int) -> None:
        super().__init__()
        self.grid = grid
        self.embed_dim = embed_dim
        self.num_prefix_tokens = num_prefix_tokens
        # Not persistent: it is a function of the grid, so checkpoints need not carry it.
        self.register_buffer("table", sincos_2d_table(grid, embed_dim), persistent=False)

    def reset_parameters(self) -> None:
        pass  # fixed, nothing learned

    def forward(self, x: Tensor, grid: Grid) -> Tensor:
        if is_symbolic(grid) or grid != self.grid:
            table = sincos_2d_table(grid, self.embed_dim).to(x.device)
        else:
            table = self.table
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        return torch.cat([prefix, patches + table.to(x.dtype)], dim=1)

    def set_grid(self, grid: Grid, mode: str) -> None:
        self.table = sincos_2d_table(grid, self.embed_dim).to(self.table.device)
        self.grid = grid

    def patch_table(self) -> Tensor:
        """The embedding added to each patch, ``(rows * cols, D)`` in raster order."""
        return self.table


def build_pos_embed2d(
    kind: str, *, grid: Grid, embed_dim: int, num_prefix_tokens: int, interp: str
) -> nn.Module | None:
    """The 2-D position embedding for ``kind`` (``learn2d`` or ``sincos2d``); None for the other
    kinds (``learn`` is the model's ``pos_embed`` table; ``none`` and ``relative`` add nothing)."""
    if kind == "learn2d":
        return Learned2dPosEmbed(grid=grid, embed_dim=embed_dim, num_prefix_tokens=num_prefix_tokens, interp=interp)
    if kind == "sincos2d":
        return SinCos2dPosEmbed(grid=grid, embed_dim=embed_dim, num_prefix_tokens=num_prefix_tokens)
    if kind in ("learn", "none", "relative"):
        return None
    raise ValueError(f"unknown position embedding {kind!r}; choose one of {', '.join(POS_EMBED_KINDS)}")


class RelativePositionLogits(nn.Module):
    """1-D relative attention logits (App. D.4), one table per layer, shared by its heads.

    Tokens are numbered 0..T-1 in sequence order (prefix tokens first, then patches in raster
    order). Each offset ``i - j`` in ``[-(T-1), T-1]`` has a learned vector ``r`` of the head
    size. The content query attends to these vectors as keys, and the result is added to the
    content logits before the softmax::

        logits[b, h, i, j] = (q[b, h, i] · k[b, h, j] + q[b, h, i] · r[i - j]) / sqrt(head_dim)

    (Shaw et al. 2018's form for the keys.) The table is tied to the number of tokens it was
    built for: 1-D raster offsets change meaning on another grid, so this kind cannot change
    resolution.
    """

    def __init__(self, *, num_tokens: int, head_dim: int) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.table = nn.Parameter(torch.zeros(2 * num_tokens - 1, head_dim))
        positions = torch.arange(num_tokens)
        offsets = positions[:, None] - positions[None, :] + num_tokens - 1
        self.register_buffer("offsets", offsets, persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.table, std=0.02)

    def forward(self, q: Tensor) -> Tensor:
        """``q`` (B, heads, T, head_dim) → additive logits (B, heads, T, T), already scaled."""
        if q.shape[-2] != self.num_tokens:
            raise ValueError(
                f"relative position embeddings were built for {self.num_tokens} tokens but the input "
                f"has {q.shape[-2]}; this kind cannot change resolution — use the image size the "
                "model was created with"
            )
        keys = self.table[self.offsets]  # (T, T, head_dim): the relative "key" of every pair
        return torch.einsum("bhid,ijd->bhij", q, keys.to(q.dtype)) * q.shape[-1] ** -0.5
