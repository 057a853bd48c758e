"""How faithful an explanation is, measured: the deletion and insertion curves (Petsiuk, Das &
Saenko, "RISE", BMVC 2018) over patches.

Deletion removes patches from the image, most relevant first, and tracks the explained class's
probability: a faithful map makes it fall fast (low area under the curve). Insertion starts from
an empty image and reveals patches in the same order: the probability should rise fast (high
area). A removed patch is set to 0 in the model's input space, which is the preprocessing's mean
colour. A random patch order is the control every method must beat. A multi-label model's
class probability is its sigmoid, any other's the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models import VisionTransformer
from ..predict import class_probabilities

#: images per forward pass while scoring perturbed images
CHUNK = 64


@dataclass(frozen=True)
class Faithfulness:
    """Areas under the curves, means over the images (probabilities, so both lie in [0, 1])."""

    #: lower is better: the class probability falls fast as the most relevant patches go
    deletion_auc: float
    #: higher is better: it rises fast as they are revealed
    insertion_auc: float

    def to_dict(self) -> dict[str, float]:
        return {"deletion_auc": self.deletion_auc, "insertion_auc": self.insertion_auc}


def perturbation_curves(
    model: VisionTransformer,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    steps: int = 16,
    seed: int = 0,
    multi_label: bool = False,
) -> tuple[Tensor, Tensor]:
    """The deletion and insertion curves ``(B, steps + 1)``: the probability of class
    ``targets[b]`` for image ``b`` with 0, 1/steps, ..., all of its patches removed (deletion) or
    revealed (insertion), in the order of ``maps`` ``(B, rows, cols)``, highest first. Patches
    that tie (a map that is 0 over a region) go in a random order (from ``seed``), not row by row."""
    rows, cols = maps.shape[-2:]
    patches = rows * cols
    steps = min(steps, patches)
    shuffle = torch.randperm(patches, generator=torch.Generator().manual_seed(seed))
    order = shuffle[maps.flatten(1)[:, shuffle].argsort(dim=1, descending=True, stable=True)]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(patches).expand_as(order))
    counts = torch.linspace(0, patches, steps + 1).round().long()
    shown = (rank[:, None, :] < counts[None, :, None]).reshape(-1, steps + 1, rows, cols)  # the top-k patches
    stride = images.shape[-1] // cols
    pixels = shown.repeat_interleave(stride, dim=-2).repeat_interleave(stride, dim=-1).unsqueeze(2)
    images = images[:, None]
    deleted = (images * ~pixels).flatten(0, 1)
    inserted = (images * pixels).flatten(0, 1)
    repeated = targets.repeat_interleave(steps + 1)
    return (
        _probabilities(model, deleted, repeated, multi_label).reshape(-1, steps + 1),
        _probabilities(model, inserted, repeated, multi_label).reshape(-1, steps + 1),
    )


def faithfulness(
    model: VisionTransformer,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    *,
    steps: int = 16,
    multi_label: bool = False,
) -> Faithfulness:
    """Deletion and insertion AUC of ``maps`` for the ``targets`` classes, averaged over images."""
    deletion, insertion = perturbation_curves(model, images, maps, targets, steps=steps, multi_label=multi_label)
    dx = 1.0 / (deletion.shape[1] - 1)
    return Faithfulness(
        deletion_auc=torch.trapezoid(deletion, dx=dx).mean().item(),
        insertion_auc=torch.trapezoid(insertion, dx=dx).mean().item(),
    )


def random_maps(count: int, grid: tuple[int, int], *, seed: int = 0) -> Tensor:
    """Maps ``(count, rows, cols)`` that rank the patches in a random order: the control."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, *grid, generator=generator)


@torch.inference_mode()
def _probabilities(model: VisionTransformer, images: Tensor, targets: Tensor, multi_label: bool) -> Tensor:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, images.shape[0], CHUNK):
        logits = model(images[start : start + CHUNK].to(device))
        chosen = targets[start : start + CHUNK].to(device)[:, None]
        chunks.append(class_probabilities(logits, multi_label=multi_label).gather(1, chosen)[:, 0].cpu())
    model.train(was_training)
    return torch.cat(chunks)
