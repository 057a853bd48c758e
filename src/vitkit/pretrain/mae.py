"""Masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021).

The encoder sees only a random 25 % of the patches (with their position embeddings); a light
decoder gets the encoded visible tokens back in place, a shared learned [mask] token at every
hidden position, fixed 2-D sine-cosine positions, and predicts the pixels of each patch. The
loss is the mean squared error on the hidden patches only, against pixels normalised per patch
(the paper's "normalised pixels" target, its best).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..models import VisionTransformer, ViTConfig
from ..models.embed import sincos_2d_table
from ..models.vit import Block
from .masking import PretrainOutput, random_token_subset


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Images ``(B, C, H, W)`` → patches ``(B, N, P·P·C)`` in raster order, pixels (row, column,
    channel) within a patch."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> Tensor:
    """The inverse of :func:`patchify`."""
    batch = patches.shape[0]
    images = patches.reshape(batch, grid[0], grid[1], patch_size, patch_size, channels)
    return images.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, grid[0] * patch_size, grid[1] * patch_size)


class MaskedAutoencoder(nn.Module):
    """Wraps an encoder for MAE pre-training; ``forward(images)`` gives the loss.

    Args:
        encoder: a plain ViT (no hybrid stem: it would see the hidden pixels; no relative
            positions: they are tied to the full token count).
        mask_ratio: fraction of patches hidden from the encoder (paper: 0.75).
        decoder_dim: the decoder's width (paper: 512 for ViT-L; narrow suffices for small models).
        decoder_depth: the decoder's blocks (paper: 8; a few suffice for small models).
        decoder_heads: the decoder's attention heads (paper: 16).
        norm_pix_loss: predict each patch's pixels normalised by its own mean and variance.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        config = encoder.config
        if config.hybrid_layers:
            raise ValueError("MAE needs a plain patch embedding; a hybrid's CNN stem would see the hidden pixels")
        if config.pos_embed == "relative":
            raise ValueError("MAE drops tokens, which relative position embeddings (tied to the token count) cannot do")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ValueError(
                f"--decoder-dim {decoder_dim} must be divisible by --decoder-heads {decoder_heads} and by 4 "
                "(its sine-cosine positions)"
            )
        if config.grid[0] * config.grid[1] < 2:
            raise ValueError(f"MAE needs at least 2 patches to hide one; the model has a {config.grid} grid")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        decoder_config = ViTConfig(
            embed_dim=decoder_dim, num_heads=decoder_heads, mlp_dim=4 * decoder_dim, norm_eps=config.norm_eps
        )
        self.decoder_embed = nn.Linear(config.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.empty(1, 1, decoder_dim).normal_(std=0.02))
        # Fixed, a function of the grid: built once, not saved in checkpoints.
        self.register_buffer("decoder_pos", sincos_2d_table(config.grid, decoder_dim), persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_config) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=config.norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, config.patch_size**2 * config.in_chans)
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):  # the encoder keeps its own init
            for module in part.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def _decoder_positions(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        table = self.decoder_pos if grid == self.encoder.config.grid else sincos_2d_table(grid, like.shape[-1])
        return table.to(like.device, like.dtype)

    def no_weight_decay(self) -> set[str]:
        """The [mask] token is an input embedding: weight decay would pull it towards zero."""
        return {"mask_token"}

    def forward_masked(self, images: Tensor) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """Predicted pixels of every patch ``(B, N, P·P·C)`` (normalised per patch if
        ``norm_pix_loss``), the hidden-patch mask ``(B, N)`` and the grid."""
        encoder = self.encoder
        prefix = encoder.config.num_prefix_tokens
        patches, grid = encoder.embed_patches(images)
        batch, num_patches, _ = patches.shape
        keep = min(num_patches - 1, max(1, round(num_patches * (1.0 - self.mask_ratio))))  # ≥ 1 seen, ≥ 1 hidden
        visible = random_token_subset(batch, num_patches, keep, device=patches.device)
        tokens = encoder.add_positions(patches, grid)
        gathered = tokens[:, prefix:].gather(1, visible[..., None].expand(-1, -1, tokens.shape[-1]))
        latent = self.decoder_embed(encoder.encode(torch.cat([tokens[:, :prefix], gathered], dim=1)))
        # Back in place: encoded tokens at the visible positions, the [mask] token elsewhere.
        decoded = self.mask_token.to(latent.dtype).expand(batch, num_patches, -1).clone()
        decoded = decoded.scatter(1, visible[..., None].expand(-1, -1, latent.shape[-1]), latent[:, prefix:])
        x = torch.cat([latent[:, :prefix], decoded + self._decoder_positions(grid, decoded)], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        predicted = self.decoder_pred(self.decoder_norm(x))[:, prefix:]
        hidden = torch.ones(batch, num_patches, dtype=torch.bool, device=patches.device)
        hidden[torch.arange(batch, device=patches.device)[:, None], visible] = False
        return predicted, hidden, grid

    def target(self, images: Tensor) -> Tensor:
        """What the decoder should output for each patch ``(B, N, P·P·C)``."""
        target = patchify(images.float(), self.encoder.config.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def forward(self, images: Tensor) -> PretrainOutput:
        predicted, hidden, _ = self.forward_masked(images)
        per_patch = (predicted.float() - self.target(images)).pow(2).mean(dim=-1)
        loss = per_patch[hidden].mean()
        return PretrainOutput(loss, {"visible_loss": per_patch[~hidden].mean().detach()})

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """For figures: (the input with hidden patches blanked, the reconstruction with visible
        patches pasted in), both ``(B, C, H, W)`` in the input's scale. With ``norm_pix_loss`` the
        prediction is shown with each hidden patch's true mean and variance, as it has none."""
        predicted, hidden, grid = self.forward_masked(images)
        size, channels = self.encoder.config.patch_size, images.shape[1]
        pixels = patchify(images.float(), size)
        if self.norm_pix_loss:  # undo the per-patch normalisation with the true patch statistics
            predicted = predicted.float() * (pixels.var(dim=-1, keepdim=True) + 1e-6).sqrt()
            predicted = predicted + pixels.mean(dim=-1, keepdim=True)
        shown = hidden[..., None]
        masked = unpatchify(
            torch.where(shown, torch.zeros_like(pixels), pixels), size, grid, channels
        )  # hidden: mid-gray
        pasted = unpatchify(torch.where(shown, predicted.float(), pixels), size, grid, channels)
        return masked, pasted
