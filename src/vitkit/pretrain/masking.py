"""Which tokens a masked objective hides: exact per-image counts, drawn at random."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: the kinds of :func:`mpp_corruption`
UNTOUCHED, MASKED, RANDOM, KEPT = 0, 1, 2, 3


@dataclass
class PretrainOutput:
    """What a pre-training objective returns: the scalar ``loss`` to minimise and ``metrics``
    (scalar tensors, averaged over held-out batches for the report)."""

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _random_ranks(batch: int, num_tokens: int, device: torch.device) -> Tensor:
    """Each row a uniformly random permutation of 0..num_tokens-1."""
    return torch.rand(batch, num_tokens, device=device).argsort(dim=1).argsort(dim=1)


def random_token_subset(batch: int, num_tokens: int, keep: int, device: torch.device | str = "cpu") -> Tensor:
    """Indices ``(batch, keep)`` of ``keep`` distinct tokens per image, in random order."""
    if not 0 < keep <= num_tokens:
        raise ValueError(f"cannot keep {keep} of {num_tokens} tokens; keep at least 1 and at most all")
    return torch.rand(batch, num_tokens, device=device).argsort(dim=1)[:, :keep]


def mpp_corruption(
    batch: int,
    num_tokens: int,
    *,
    ratio: float = 0.5,
    masked: float = 0.8,
    random: float = 0.1,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The paper's corruption plan (App. B.1.2), ``(batch, num_tokens)`` of kinds:
    :data:`UNTOUCHED`, :data:`MASKED` (replaced by the [mask] embedding), :data:`RANDOM`
    (replaced by another patch's embedding) or :data:`KEPT` (corrupted, but left as it is).

    Every image gets exactly ``round(ratio · N)`` corrupted patches, of which ``round(masked ·
    k)`` are masked and ``round(random · k)`` random — exact counts rather than coin flips, so
    small grids see the intended proportions in every image.
    """
    if not 0.0 < ratio <= 1.0 or masked < 0 or random < 0 or masked + random > 1.0:
        raise ValueError(
            f"corruption ratio {ratio} must be in (0, 1] and the masked ({masked}) and random ({random}) "
            "fractions non-negative with a sum of at most 1"
        )
    corrupted = max(1, round(ratio * num_tokens))
    n_masked = round(masked * corrupted)
    n_random = min(round(random * corrupted), corrupted - n_masked)
    ranks = _random_ranks(batch, num_tokens, torch.device(device))
    kinds = torch.full((batch, num_tokens), UNTOUCHED, dtype=torch.long, device=device)
    kinds[ranks < corrupted] = KEPT
    kinds[ranks < n_masked + n_random] = RANDOM
    kinds[ranks < n_masked] = MASKED
    return kinds
