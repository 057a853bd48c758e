"""The Vision Transformer (Dosovitskiy et al., ICLR 2021, §3.1, equations 1–4).

    z0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}
    z_l = MLP(LN(z'_l)) + z'_l
    y = LN(z_L)[class]  (or the mean of the patch tokens)

Parameter names follow timm's (``patch_embed.proj``, ``blocks.i.attn.qkv``, ...) so people who
know one know the other.
"""

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.utils.checkpoint import checkpoint

from .config import ViTConfig, to_pair
from .embed import Grid, PatchEmbed, RelativePositionLogits, build_pos_embed2d, is_symbolic, resample_pos_embed
from .hybrid import HybridEmbed

#: The most numbers (parameters and buffers) a model may hold unless the caller raises it (``max_params=``,
#: ``VITKIT_MAX_PARAMS``): above ViT-G/14's 1.8e9, the largest ViT with public weights, and 8 GB in fp32 (32 GB to
#: train with AdamW). A config file claiming more is far likelier wrong than meant, and would be built before failing.
MAX_PARAMS = 2_000_000_000
MAX_PARAMS_ENV = "VITKIT_MAX_PARAMS"


#: The attention kernels a model can run (:meth:`VisionTransformer.set_attention_kernel`).
ATTENTION_KERNELS = ("sdpa", "explicit")


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    ``forward(x)`` runs the kernel in ``kernel`` (one of :data:`ATTENTION_KERNELS`): PyTorch's
    ``scaled_dot_product_attention`` ("sdpa", the default, and what compiled and exported graphs
    take), or the explicit matmul-softmax-matmul ("explicit"), which without autograd takes
    ``query_chunk`` queries at a time (0: about 2¹⁶ weights per image and head). Which is faster
    depends on the machine: ``vitkit.decisions`` measures it. With ``return_attention=True`` the
    softmax is explicit and the weights ``(B, heads, N, N)`` come back too. All give the same output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
        relative_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.kernel = "sdpa"
        self.query_chunk = 0
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.rel_pos = (
            RelativePositionLogits(num_tokens=relative_tokens, head_dim=self.head_dim)
            if relative_tokens is not None
            else None
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-uniform projections with zero biases (the JAX reference). q, k and v are three
        D×D matrices there, so the fused qkv weight is bounded as one of them."""
        dim = self.proj.in_features
        bound = math.sqrt(6.0 / (dim + dim))
        nn.init.uniform_(self.qkv.weight, -bound, bound)
        nn.init.xavier_uniform_(self.proj.weight)
        for bias in (self.qkv.bias, self.proj.bias):
            if bias is not None:
                nn.init.zeros_(bias)
        if self.rel_pos is not None:
            self.rel_pos.reset_parameters()

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.rel_pos(q) if self.rel_pos is not None else None
        dropout_p = self.attn_dropout if self.training else 0.0
        if return_attention:
            weights = _attention_weights(q, k, bias, self.head_dim**-0.5)
            x = F.dropout(weights, dropout_p, self.training) @ v
        else:
            x = attention(q, k, v, bias, dropout_p, self.kernel, self.query_chunk)
        x = self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))
        return (x, weights) if return_attention else x


def _attention_weights(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    # In place: no second (B, heads, N, N) tensor, same bits (bf16 CPU inference attention was
    # measured 1.22× faster at 197 tokens). Safe under autograd: no backward here reads the logits.
    logits = (q @ k.transpose(-2, -1)).mul_(scale)
    if bias is not None:
        logits.add_(bias)
    return logits.softmax(dim=-1)


@torch.fx.wrap  # one call in an FX graph: the kernel runs on real tensors
def attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout_p: float, kernel: str = "sdpa", query_chunk: int = 0
) -> Tensor:
    """softmax(q kᵀ / √d + bias) v by ``kernel`` (see :class:`Attention`). Without autograd the
    explicit kernel takes ``query_chunk`` queries at a time, so the weights held at once are
    (B, heads, chunk, N), not (B, heads, N, N); by default (0) a chunk holds about 2¹⁶ weights
    per image and head, and at least 64 queries. Under torch.compile and export the kernel is
    sdpa whatever ``kernel`` says: a graph has no machine to measure, and inductor fuses it; with
    a ``bias`` (relative positions) it is explicit, as torch.export decomposes sdpa with a mask
    into a view that fails at a free batch size (torch 2.14)."""
    if torch.compiler.is_compiling():
        kernel = "sdpa" if bias is None else "explicit"
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
    scale = q.shape[-1] ** -0.5
    tokens = q.shape[-2]
    if query_chunk == 0:  # not `or`: TorchScript (of an FX graph) types that as a bool
        query_chunk = max(64, 65536 // tokens)
    if torch.is_grad_enabled() or tokens <= query_chunk:  # autograd keeps every chunk's weights anyway
        return F.dropout(_attention_weights(q, k, bias, scale), dropout_p, dropout_p > 0) @ v
    # Once here, not in every chunk's matmuls: (B, heads, N, d) views of the qkv output cannot be
    # folded to (B·heads, N, d) without a copy (k and v copies took 21 % of a step at 1,025 tokens).
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    chunks = []
    for start in range(0, tokens, query_chunk):
        rows = slice(start, start + query_chunk)
        weights = _attention_weights(q[..., rows, :], k, None if bias is None else bias[..., rows, :], scale)
        chunks.append(F.dropout(weights, dropout_p, dropout_p > 0) @ v)
    return torch.cat(chunks, dim=-2)


class Mlp(nn.Module):
    """Linear(D, M) → GELU → dropout → Linear(M, D) → dropout (the JAX MlpBlock)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Xavier-uniform weights and tiny-normal biases (the JAX MlpBlock)."""
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """A pre-LN encoder block: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))``."""

    def __init__(self, config: ViTConfig, drop_path: float = 0.0, relative_tokens: int | None = None) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = Attention(
            dim,
            config.num_heads,
            qkv_bias=config.qkv_bias,
            attn_dropout=config.attn_dropout,
            dropout=config.dropout,
            relative_tokens=relative_tokens,
        )
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, config.mlp_dim, config.dropout)
        self.drop_path = DropPath(drop_path)

    def reset_parameters(self) -> None:
        for part in (self.norm1, self.attn, self.norm2, self.mlp):
            part.reset_parameters()

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        if return_attention:
            y, weights = self.attn(self.norm1(x), return_attention=True)
        else:
            y = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class VisionTransformer(nn.Module):
    """The ViT of the paper and its ablations, built from a :class:`ViTConfig`.

    ``model(x)`` maps images ``(B, C, H, W)`` to logits ``(B, num_classes)``. The pieces:
    ``forward_features`` (normalised tokens), ``forward_head`` (pool → pre-logits → classifier),
    ``forward_intermediates`` (per-block outputs) and ``attention_maps`` (softmax weights).
    """

    def __init__(self, config: ViTConfig, *, max_params: int | None = None) -> None:
        """``max_params``: refuse a config whose model holds more numbers than this (default
        :data:`MAX_PARAMS`, or ``VITKIT_MAX_PARAMS``), before anything is allocated."""
        super().__init__()
        if torch.get_default_device().type != "meta":  # on meta nothing is allocated (and the check builds there)
            check_model_size(config, max_params)
        self.config = config
        D = config.embed_dim
        if config.hybrid_layers:
            self.patch_embed: nn.Module = HybridEmbed(
                layers=config.hybrid_layers, in_chans=config.in_chans, embed_dim=D, patch_size=config.patch_size
            )
        else:
            self.patch_embed = PatchEmbed(in_chans=config.in_chans, embed_dim=D, patch_size=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if config.class_token else None
        # The paper's learned 1-D table (a row per prefix token and per patch, raster order) is a
        # bare parameter under timm's name, so timm's state dicts load as they are.
        self.pos_embed: nn.Parameter | None = None
        if config.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.zeros(1, self._num_tokens(config.grid), D))
        self.pos_embed2d = build_pos_embed2d(
            config.pos_embed,
            grid=config.grid,
            embed_dim=D,
            num_prefix_tokens=config.num_prefix_tokens,
            interp=config.pos_embed_interp,
        )
        self.pos_drop = nn.Dropout(config.dropout)
        relative_tokens = self._num_tokens(config.grid) if config.pos_embed == "relative" else None
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(Block(config, rate, relative_tokens) for rate in rates)
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.pre_logits: nn.Module = nn.Identity()
        if config.representation_size:
            self.pre_logits = nn.Sequential(nn.Linear(D, config.representation_size), nn.Tanh())
        self.head = self._new_head(config.num_classes)
        #: recompute each block's activations in the backward pass instead of storing them
        self.grad_checkpointing = False
        #: mean, std, interpolation, crop_pct and crop_mode of the model's inputs (see pretrained_cfg)
        self.data_config: dict[str, Any] = {
            "mean": (0.5,) * config.in_chans,
            "std": (0.5,) * config.in_chans,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
        self.init_weights()

    # ----------------------------------------------------------------- construction
    # timm's model contract: the attributes its tools (optimiser factory, data config, feature
    # extraction) read. They are views of ``config``, the one place these facts are kept.
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_features(self) -> int:
        """Width of the tokens ``forward_features`` returns (D), as in timm."""
        return self.config.embed_dim

    @property
    def head_hidden_size(self) -> int:
        """Width of what the classifier sees: ``representation_size`` or D."""
        return self.config.representation_size or self.config.embed_dim

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    @property
    def global_pool(self) -> str:
        """ "token" (the class token) or "avg" (the patch tokens' mean): timm's names for them."""
        return self.config.pool

    def get_classifier(self) -> nn.Module:
        return self.head

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """How images must be prepared for this model, in timm's keys (what timm's
        ``resolve_model_data_config`` reads): vitkit's own inputs by default (scaled to [-1, 1],
        bilinear resize, no crop margin), or the preprocessing of the weights it was loaded with."""
        return {
            "input_size": (self.config.in_chans, *self.config.img_size),
            "fixed_input_size": not self.config.dynamic_img_size,
            "num_classes": self.config.num_classes,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
            **self.data_config,
        }

    @pretrained_cfg.setter
    def pretrained_cfg(self, cfg: dict[str, Any]) -> None:
        self.data_config = {k: cfg[k] for k in ("mean", "std", "interpolation", "crop_pct", "crop_mode") if k in cfg}

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth, in timm's form (regular expressions over parameter names):
        the embeddings first, then one group per block, then the final norm (layer-wise
        learning-rate decay builds on this; ``coarse`` is accepted for timm and changes nothing)."""
        return {
            "stem": r"^cls_token|^pos_embed|^patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def _num_tokens(self, grid: Grid) -> int:
        return self.config.num_prefix_tokens + grid[0] * grid[1]

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.head_hidden_size, num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    @torch.no_grad()
    def init_weights(self) -> None:
        """The JAX reference's initialisation; each part knows its own (``reset_parameters``):
        LeCun-normal patch projection, xavier-uniform linear layers, position embeddings
        normal(std 0.02), zero class token and zero classifier."""
        self.patch_embed.reset_parameters()
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)
        if self.pos_embed2d is not None:
            self.pos_embed2d.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.norm.reset_parameters()
        for layer in self.pre_logits.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        if self.cls_token is not None:
            nn.init.zeros_(self.cls_token)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names weight decay must leave alone (timm's convention; optimisers also skip
        every vector, i.e. biases and norm scales): the class token, the position embeddings and
        the relative-position tables, additive offsets that decay would pull towards zero."""
        names = {name for name, _ in self.named_parameters() if name.startswith("pos_embed") or ".rel_pos." in name}
        return names | ({"cls_token"} if self.cls_token is not None else set())

    def reset_classifier(
        self, num_classes: int, global_pool: str | None = None, *, keep_pre_logits: bool = False
    ) -> None:
        """Replace the head by a zero-initialised linear layer for ``num_classes`` (the paper's
        fine-tuning head). The pre-training MLP head's hidden layer goes too, unless
        ``keep_pre_logits``. ``num_classes=0`` leaves no classifier (the model returns features).
        ``global_pool`` ("token" or "avg", timm's argument) changes the pooling as well."""
        if global_pool is not None:
            self.config = self.config.replace(pool=global_pool)
        if not keep_pre_logits and self.config.representation_size:
            self.pre_logits = nn.Identity()
            self.config = self.config.replace(representation_size=None)
        like = next(self.parameters())
        self.head = self._new_head(num_classes).to(device=like.device, dtype=like.dtype).train(self.training)
        self.config = self.config.replace(num_classes=num_classes)

    def set_image_size(self, img_size: int | tuple[int, int], *, mode: str | None = None) -> None:
        """Change the resolution the model is built for (paper §3.2): the patch size stays, the
        grid grows or shrinks, learned position embeddings are 2-D interpolated (``mode``
        defaults to ``config.pos_embed_interp``)."""
        new_config = self.config.replace(img_size=to_pair(img_size))
        if self.config.pos_embed == "relative" and new_config.grid != self.config.grid:
            raise ValueError(
                "relative position embeddings are tied to the token count they were trained with "
                f"({self._num_tokens(self.config.grid)}); a {new_config.img_size} image has a different count"
            )
        mode = mode or self.config.pos_embed_interp
        if self.pos_embed is not None:
            with torch.no_grad():
                table = resample_pos_embed(
                    self.pos_embed,
                    new_config.grid,
                    old_grid=self.config.grid,
                    num_prefix_tokens=self.num_prefix_tokens,
                    mode=mode,
                )
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
        if self.pos_embed2d is not None:
            self.pos_embed2d.set_grid(new_config.grid, mode)
        self.config = new_config

    def position_table(self) -> Tensor | None:
        """The position embedding added to each patch, ``(rows * cols, D)`` in raster order
        (None when the model adds none)."""
        if self.pos_embed is not None:
            return self.pos_embed[0, self.num_prefix_tokens :]
        return self.pos_embed2d.patch_table() if self.pos_embed2d is not None else None

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size: int | None = None) -> None:
        """timm's name for :meth:`set_image_size` (the patch size cannot change)."""
        if patch_size is not None and to_pair(patch_size) != to_pair(self.config.patch_size):
            raise ValueError(
                f"vitkit cannot change the patch size of a built model ({self.config.patch_size} → {patch_size}); "
                "create one with the patch size you want"
            )
        if img_size is not None:
            self.set_image_size(img_size)

    # --------------------------------------------------------------------- forward
    def _check_input(self, x: Tensor) -> Tensor:
        """Refuse inputs the model cannot read with an error that says why; pad if asked to."""
        config = self.config
        if x.ndim != 4:
            raise ValueError(
                f"expected a batch of images shaped (B, C, H, W), got a tensor of shape {tuple(x.shape)}"
                + ("; add a batch dimension with x.unsqueeze(0)" if x.ndim == 3 else "")
            )
        if x.shape[1] != config.in_chans:
            raise ValueError(
                f"the model expects {config.in_chans} channel(s) but the input has {x.shape[1]} "
                f"(shape {tuple(x.shape)}); convert the images or create the model with in_chans={x.shape[1]}"
            )
        height, width = x.shape[-2:]
        stride = config.stride
        if height % stride or width % stride:
            if not config.dynamic_img_pad:
                raise ValueError(
                    f"image size {height}×{width} is not divisible by the patch size {stride}; resize or "
                    f"crop to a multiple of {stride}, or create the model with dynamic_img_pad=True"
                )
            x = F.pad(x, (0, -width % stride, 0, -height % stride))
            height, width = x.shape[-2:]
        if not config.dynamic_img_size and (height, width) != config.img_size:
            raise ValueError(
                f"the model is built for {config.img_size[0]}×{config.img_size[1]} images but got "
                f"{height}×{width}; call model.set_image_size(({height}, {width})) or create it with "
                "dynamic_img_size=True"
            )
        return x

    # The three stages of the forward pass are public so that self-supervised objectives
    # (vitkit.pretrain) can change the token sequence between them: corrupt patch embeddings
    # before the positions are added, or drop tokens before the encoder sees them.
    def embed_patches(self, x: Tensor) -> tuple[Tensor, Grid]:
        """Images ``(B, C, H, W)`` → patch embeddings ``(B, N, D)`` (no class token, no
        positions) and the patch grid ``(rows, cols)``."""
        # A traced graph (FX, TorchScript) records no Python checks; it is made for the configured grid.
        if is_fx_symbolic_tracing() or torch.jit.is_tracing():
            patches, _ = self.patch_embed(x)
            return patches, self.config.grid
        return self.patch_embed(self._check_input(x))

    def add_positions(self, patches: Tensor, grid: Grid) -> Tensor:
        """Patch embeddings → z0: the class token prepended, position embeddings added (eq. 1)."""
        if self.cls_token is not None:
            patches = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1).to(patches.dtype), patches], dim=1)
        if self.pos_embed is not None:
            pos = self.pos_embed
            if is_symbolic(grid) or grid != self.config.grid:  # dynamic image size: resample on the fly
                pos = resample_pos_embed(
                    pos,
                    grid,
                    old_grid=self.config.grid,
                    num_prefix_tokens=self.num_prefix_tokens,
                    mode=self.config.pos_embed_interp,
                )
            patches = patches + pos
        elif self.pos_embed2d is not None:
            patches = self.pos_embed2d(patches, grid)
        return self.pos_drop(patches)

    def encode(self, tokens: Tensor) -> Tensor:
        """Any token sequence ``(B, T, D)`` → the encoder's normalised output ``(B, T, D)``."""
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.norm(tokens)

    def _embed(self, x: Tensor) -> Tensor:
        return self.add_positions(*self.embed_patches(x))

    def set_attention_kernel(self, kernel: str, query_chunk: int = 0) -> None:
        """Run every block's attention with ``kernel`` (one of :data:`ATTENTION_KERNELS`) and, for
        the explicit kernel without autograd, ``query_chunk`` queries at a time (0: the default
        size). The same numbers either way, up to rounding; speed is the machine's."""
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"unknown attention kernel {kernel!r}; choose one of {', '.join(ATTENTION_KERNELS)}")
        if query_chunk < 0:
            raise ValueError(f"query_chunk must be 0 (the default size) or positive, not {query_chunk}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.kernel, module.query_chunk = kernel, query_chunk

    @property
    def attention_kernel(self) -> tuple[str, int]:
        """``(kernel, query_chunk)`` of the blocks' attention (see :meth:`set_attention_kernel`)."""
        first = next(module for module in self.modules() if isinstance(module, Attention))
        return first.kernel, first.query_chunk

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing while training: keep only each block's input and recompute
        the rest during the backward pass (less memory, about one more forward pass of time)."""
        self.grad_checkpointing = enabled

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` → normalised tokens ``(B, prefix + N, D)``."""
        return self.encode(self._embed(x))

    def pool(self, tokens: Tensor, how: str | None = None) -> Tensor:
        """Tokens ``(B, T, D)`` → one vector per image: the class token (``how="token"``) or the
        patch tokens' mean (``"avg"``); by default the way the model's head pools (``config.pool``)."""
        if (how or self.config.pool) == "avg":
            return tokens[:, self.config.num_prefix_tokens :].mean(dim=1)
        return tokens[:, 0]

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Normalised tokens → logits ``(B, num_classes)``, or with ``pre_logits`` the pooled
        representation ``(B, head_hidden_size)`` the classifier would see."""
        x = self.pre_logits(self.pool(features))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def _block_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """timm's rule: None for every block, an int ``n`` for the last ``n``, or indices
        (negative ones count from the end)."""
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"asked for the last {indices} blocks of a model with {depth}")
            return list(range(depth - indices, depth))
        resolved = []
        for index in indices:
            if not -depth <= index < depth:
                raise ValueError(f"block index {index} is out of range for a model with {depth} blocks")
            resolved.append(index % depth)
        return resolved

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """Each block as a feature source, in timm's form: module name, channels, stride."""
        stride = self.config.stride
        return [
            {"module": f"blocks.{i}", "num_chs": self.config.embed_dim, "reduction": stride}
            for i in range(len(self.blocks))
        ]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """Outputs of chosen blocks, for dense tasks and probing, with timm's contract.

        Args:
            x: images ``(B, C, H, W)``.
            indices: block indices (negative counts from the end), an int ``n`` for the last
                ``n`` blocks, or None for all.
            return_prefix_tokens: pair each output with its prefix (class) tokens ``(B, prefix, D)``.
            norm: apply the final LayerNorm to each output.
            stop_early: run no block after the last one asked for (the final output is then
                that block's, normalised).
            output_fmt: "NCHW" for feature maps ``(B, D, H/P, W/P)``, "NLC" for patch tokens
                ``(B, N, D)``; prefix tokens are left out of both.
            intermediates_only: return only the list of outputs.

        Returns:
            ``(final, outputs)``: ``forward_features``' result and the list, or the list alone.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt is 'NCHW' or 'NLC', got {output_fmt!r}")
        wanted = self._block_indices(indices)
        height, width = x.shape[-2:]
        x = self._embed(x)
        grid = (math.ceil(height / self.config.stride), math.ceil(width / self.config.stride))
        prefix = self.config.num_prefix_tokens
        blocks = self.blocks[: max(wanted) + 1] if stop_early or intermediates_only else self.blocks
        outputs: dict[int, Any] = {}
        for index, block in enumerate(blocks):
            x = block(x)
            if index in wanted:
                out = self.norm(x) if norm else x
                patches = out[:, prefix:]
                if output_fmt == "NCHW":
                    patches = patches.transpose(1, 2).reshape(out.shape[0], -1, *grid)
                outputs[index] = (patches, out[:, :prefix]) if return_prefix_tokens and prefix else patches
        intermediates = [outputs[i] for i in wanted]
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm and the head, if
        asked) from a model used only for :meth:`forward_intermediates`. Returns the block
        indices kept for it."""
        wanted = self._block_indices(indices)
        self.blocks = self.blocks[: max(wanted) + 1]
        self.config = self.config.replace(depth=len(self.blocks))
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return wanted

    def forward_attention(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The logits and the softmax attention weights of every block, each ``(B, heads, T, T)``,
        from one pass on the explicit attention path (for this call only: the model keeps its
        fused attention). Differentiable: class-specific explanations take gradients through the
        weights."""
        x = self._embed(x)
        maps = []
        for block in self.blocks:
            x, weights = block(x, return_attention=True)
            maps.append(weights)
        return self.forward_head(self.norm(x)), maps

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """The softmax attention weights of every block (see :meth:`forward_attention`)."""
        return self.forward_attention(x)[1]


def _one_block_shell(config: ViTConfig) -> VisionTransformer:
    """``config``'s model with a single block, on the meta device: shapes without storage, built in
    a time that does not grow with the depth (every block has the same tensors)."""
    with torch.device("meta"):
        return VisionTransformer(config.replace(depth=1))


def _numel(tensors: Iterable[Tensor]) -> int:
    return sum(t.numel() for t in tensors)


def parameter_count(config: ViTConfig) -> int:
    """How many parameters a model of ``config`` has (counted on the meta device: nothing is allocated)."""
    shell = _one_block_shell(config)
    return _numel(shell.parameters()) + (config.depth - 1) * _numel(shell.blocks[0].parameters())


def check_model_size(config: ViTConfig, max_params: int | None = None) -> None:
    """Refuse ``config`` if its model would hold more than ``max_params`` numbers, parameters and
    buffers (default :data:`MAX_PARAMS`, or the environment variable ``VITKIT_MAX_PARAMS``),
    naming the size and the largest tensor. Counted on the meta device: nothing is allocated."""
    shell = _one_block_shell(config)
    block = shell.blocks[0]
    total = _numel(shell.parameters()) + _numel(shell.buffers())
    total += (config.depth - 1) * (_numel(block.parameters()) + _numel(block.buffers()))
    refuse_oversized(f"a ViT of {config.describe()}", total, shell, max_params)


def refuse_oversized(what: str, total: int, shell: nn.Module, max_params: int | None) -> None:
    """Refuse a model (``what``, in words) of ``total`` numbers above ``max_params`` (default
    :data:`MAX_PARAMS`, or ``VITKIT_MAX_PARAMS``), naming the largest tensor of its ``shell``."""
    if max_params is None:
        setting = os.environ.get(MAX_PARAMS_ENV, "")
        try:
            max_params = int(float(setting)) if setting else MAX_PARAMS
        except ValueError:
            raise ValueError(f"{MAX_PARAMS_ENV}={setting!r} is not a number of parameters (e.g. 5e9)") from None
    if total <= max_params:
        return
    name, largest = max([*shell.named_parameters(), *shell.named_buffers()], key=lambda item: item[1].numel())
    raise ValueError(
        f"{what} would hold {total:.3g} numbers ({4 * total / 1e9:.3g} GB in fp32; its "
        f"largest tensor is {name} {tuple(largest.shape)}), over the limit of {max_params:.3g}. A config this "
        f"size is likelier wrong than meant; if it is meant, raise the limit ({MAX_PARAMS_ENV}=..., or max_params=)"
    )


class FeatureInfo(list):
    """The feature sources of a :class:`FeatureMaps`: dicts of module name, channels and stride,
    with timm's accessors."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


class FeatureMaps(nn.Module):
    """A ViT as a feature extractor (timm's ``features_only=True``): ``forward(x)`` returns the
    outputs of the blocks at ``out_indices`` (an int ``n``: the last ``n``) as feature maps
    ``(B, D, H/P, W/P)``. The blocks after the last one asked for, and the head, are dropped."""

    def __init__(self, model: VisionTransformer, out_indices: int | Sequence[int] = 3) -> None:
        super().__init__()
        self.model = model
        self.out_indices = model.prune_intermediate_layers(out_indices)
        self.feature_info = FeatureInfo(model.feature_info[i] for i in self.out_indices)

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The ViT's input facts (see :attr:`VisionTransformer.pretrained_cfg`)."""
        return self.model.pretrained_cfg

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.model.pretrained_cfg

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, intermediates_only=True)
