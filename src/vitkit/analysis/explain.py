"""Why a model answered: per-image explanation maps over the patch grid, and pictures of them.

Three methods, each a map ``(rows, cols)`` of how much every patch mattered:

- ``rollout``: attention rollout (Abnar & Zuidema 2020; the paper's Fig. 6). Class-agnostic:
  it shows what the output token draws on, whatever the class.
- ``relevance``: gradient-weighted attention relevance (Chefer, Gur & Wolf, "Transformer
  Interpretability Beyond Attention Visualization", CVPR 2021, in the gradient × attention form
  of their ICCV 2021 follow-up). Per block, the heads' attention weighted by the class score's
  gradient, positive part, head mean: ``Ā = E_h[(∇A ⊙ A)⁺]``; the blocks accumulate as
  ``R ← R + Ā R`` from ``R = I`` (the residual path); the output token's row of R.
- ``gradcam``: Grad-CAM (Selvaraju et al. 2017) on the tokens the last block reads (after its
  first LayerNorm): channel weights are the class score's gradient averaged over the patch
  tokens; the map is the positive part of the weighted sum. The last block's *output* would not
  do: the classifier reads only the class token there, so patch tokens get no gradient.

A BiT ResNet has no attention: of the three, only Grad-CAM applies, on its last feature map (the
original method's own setting; 1/32 of the image's side, so coarse on small images).

The class-specific methods explain any class (``target``), by default the predicted one. Maps are
scaled to [0, 1] per image. Used by ``vitkit inspect`` and ``vitkit serve``.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.transforms import Preprocessing
from ..models import Network, VisionTransformer
from .compute import attention_maps, attention_rollout, output_attention

#: the explanation methods, class-agnostic first
METHODS = ("rollout", "relevance", "gradcam")
#: what ``vitkit serve`` accepts for ``explain=``
EXPLANATIONS = ("none", *METHODS)


def methods_for(model: Network) -> tuple[str, ...]:
    """The explanation methods that apply to ``model``: all for a ViT, Grad-CAM for a ResNet."""
    return METHODS if isinstance(model, VisionTransformer) else ("gradcam",)


def explanation_maps(
    model: Network, images: Tensor, method: str, target: int | Sequence[int] | Tensor | None = None
) -> Tensor:
    """``method``'s map for each preprocessed image ``(B, C, H, W)``: ``(B, rows, cols)`` in [0, 1].

    ``target`` is the class to explain (one for all images, or one per image); by default each
    image's predicted class. ``rollout`` ignores it."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation {method!r}; choose one of {', '.join(METHODS)}")
    if method not in methods_for(model):
        raise ValueError(f"{method} reads attention, which a ResNet has none of; explain a ResNet with gradcam")
    if not isinstance(model, VisionTransformer):
        return _unit_range(_feature_map_gradcam(model, images, target))
    config = model.config
    device = next(model.parameters()).device
    images = images.to(device)
    grid = (images.shape[-2] // config.stride, images.shape[-1] // config.stride)
    if method == "rollout":
        maps = attention_rollout(
            attention_maps(model, images), num_prefix_tokens=config.num_prefix_tokens, grid=grid, pool=config.pool
        )
    else:
        maps = _class_specific(model, images, method, target).reshape(-1, *grid)
    return _unit_range(maps.float())


def _feature_map_gradcam(model: Network, images: Tensor, target: object) -> Tensor:
    """Grad-CAM on a CNN's last feature map ``(B, C, h, w)``: channel weights are the class score's
    gradient averaged over the map; ``(B, h, w)``, the positive part of the weighted sum."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            features = model.forward_features(images.to(next(model.parameters()).device))
            logits = model.forward_head(features)
            score = logits.gather(1, _targets(target, logits)[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, features)
    finally:
        model.train(was_training)
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    return (features.detach().float() * weights).sum(dim=1).clamp_min(0)


def predicted_classes(model: Network, images: Tensor) -> Tensor:
    """The top class of each preprocessed image ``(B,)``."""
    with torch.inference_mode():
        return model(images.to(next(model.parameters()).device)).argmax(dim=-1).cpu()


def _class_specific(model: VisionTransformer, images: Tensor, method: str, target: object) -> Tensor:
    """``(B, N)`` patch scores of ``relevance`` or ``gradcam`` for the ``target`` classes."""
    config = model.config
    read_by_last_block: list[Tensor] = []
    hook = model.blocks[-1].norm1.register_forward_hook(lambda module, args, out: read_by_last_block.append(out))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # Grad flows to the input, so gradients exist even when the weights are frozen.
            logits, attentions = model.forward_attention(images.clone().requires_grad_(True))
            classes = _targets(target, logits)
            score = logits.gather(1, classes[:, None].to(logits.device)).sum()
            tensors = attentions if method == "relevance" else read_by_last_block[-1:]
            gradients = torch.autograd.grad(score, tensors)
    finally:
        hook.remove()
        model.train(was_training)
    prefix = config.num_prefix_tokens
    if method == "gradcam":
        tokens, gradient = read_by_last_block[-1].detach().float(), gradients[0].float()
        weights = gradient[:, prefix:].mean(dim=1, keepdim=True)  # (B, 1, D): one weight per channel
        return (tokens[:, prefix:] * weights).sum(dim=-1).clamp_min(0)
    relevance = None
    for weights, gradient in zip(attentions, gradients, strict=True):
        mixed = (gradient.float() * weights.detach().float()).clamp_min(0).mean(dim=1)  # (B, T, T)
        if relevance is None:
            relevance = torch.eye(mixed.shape[-1], device=mixed.device).expand_as(mixed)
        relevance = relevance + mixed @ relevance
    return output_attention(relevance, num_prefix_tokens=prefix, pool=config.pool)


def _targets(target: object, logits: Tensor) -> Tensor:
    """The class to explain for each image: ``target`` (one, or one per image) or the top class."""
    count, classes = logits.shape
    if target is None:
        return logits.detach().argmax(dim=-1)
    # a copy: targets made under inference mode could not index a tensor autograd tracks
    chosen = torch.as_tensor(target).long().flatten().clone().to(logits.device)
    if chosen.numel() == 1:
        chosen = chosen.expand(count)
    if chosen.numel() != count:
        raise ValueError(f"{chosen.numel()} target classes for {count} images: give one, or one per image")
    if ((chosen < 0) | (chosen >= classes)).any():
        raise ValueError(f"class index out of range in {chosen.tolist()}: the model has {classes} classes")
    return chosen


def _unit_range(maps: Tensor) -> Tensor:
    """Each map shifted and scaled to [0, 1] (a constant map becomes zeros)."""
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = (flat.max(dim=1, keepdim=True).values - low).clamp_min(1e-12)
    return ((flat - low) / span).reshape(maps.shape)


def input_picture(image: Tensor, preprocessing: Preprocessing) -> Image.Image:
    """The model's input ``(C, H, W)`` back in 8-bit RGB: what the model saw, after resize and crop."""
    mean = torch.tensor(preprocessing.mean).view(-1, 1, 1)
    std = torch.tensor(preprocessing.std).view(-1, 1, 1)
    pixels = (image.float().cpu() * std + mean).clamp(0, 1).expand(3, -1, -1)
    return Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def heatmap(values: Tensor, size: tuple[int, int]) -> Image.Image:
    """A ``(rows, cols)`` map in [0, 1] as an RGBA picture of ``size`` (height, width): inferno
    colours, more opaque where the map is higher, smooth (bicubic) between patch centres."""
    small = Image.fromarray((values.float().cpu().numpy() * 255).round().astype(np.uint8))
    level = np.asarray(small.resize((size[1], size[0]), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    rgba = matplotlib.colormaps["inferno"](level)
    rgba[..., 3] = 0.35 + 0.65 * level
    return Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA")


def overlay(picture: Image.Image, heat: Image.Image, opacity: float = 0.6) -> Image.Image:
    """``heat`` blended over ``picture`` at ``opacity`` (0: the picture alone, 1: the heat map)."""
    faded = heat.copy()
    faded.putalpha(Image.fromarray((np.asarray(heat.getchannel("A"), dtype=np.float32) * opacity).astype(np.uint8)))
    return Image.alpha_composite(picture.convert("RGBA"), faded).convert("RGB")
