"""Frozen features of a dataset: one vector per image."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..data.datasets.image_datasets import TransformedDataset, collate_skipping_broken, preprocess_in_memory
from ..models import Network, VisionTransformer
from ..models.config import POOLS

#: "head": what the classifier would see (the model's own pooling and pre-logits); or a pooling
#: of the tokens (:attr:`VisionTransformer.pool`): "token", the class token's output, or "avg",
#: the mean of the patch tokens' outputs
FEATURE_POOLS = ("head", *POOLS)


@torch.inference_mode()
def extract_features(
    model: Network,
    dataset: Dataset,
    preprocess: Callable,
    *,
    pool: str = "head",
    batch_size: int = 256,
) -> tuple[Tensor, Tensor]:
    """Features ``(N, D)`` (float32, CPU) and labels ``(N,)`` of every readable image of
    ``dataset`` (samples ``(image, label)``), preprocessed as the model expects."""
    if pool not in FEATURE_POOLS:
        raise ValueError(f"unknown feature pooling {pool!r}; choose one of {', '.join(FEATURE_POOLS)}")
    if isinstance(dataset, IterableDataset):
        raise ValueError("frozen features are computed from an image folder, a CSV or a built-in dataset, not shards")
    if pool != "head" and not isinstance(model, VisionTransformer):
        raise ValueError(f"--pool {pool} pools a ViT's tokens; a ResNet's features are its pooled map: use --pool head")
    if pool == "token" and not model.config.class_token:
        raise ValueError("the model has no class token; use --pool avg or head")
    was_training = model.training
    model.eval()
    inputs = preprocess_in_memory(dataset, preprocess) or TransformedDataset(dataset, preprocess)
    loader = DataLoader(inputs, batch_size=batch_size, collate_fn=collate_skipping_broken)
    device = next(model.parameters()).device
    features, labels = [], []
    for images, batch_labels, _ in loader:
        if images is None:
            continue
        tokens = model.forward_features(images.to(device))
        vectors = model.forward_head(tokens, pre_logits=True) if pool == "head" else model.pool(tokens, pool)
        features.append(vectors.float().cpu())
        labels.append(batch_labels)
    model.train(was_training)
    if not features:
        raise ValueError("no readable image to compute features of")
    return torch.cat(features), torch.cat(labels)
