"""Few-shot linear evaluation (paper §4.1): a closed-form, L2-regularised least-squares map from
frozen features of ``shots`` images per class to {-1, 1}^K targets, scored on held-out images.

As in big_vision: features are standardised with the training shots' statistics, a constant
bias column is appended (large, so the bias is all but unregularised), and one
eigendecomposition serves every L2 strength — for N shots of D features it is the D×D Gram
matrix when N ≥ D, else the N×N kernel matrix (the same solution, smaller problem).

big_vision uses one fixed L2 strength (2^10). The best strength depends on the feature width
and the number of shots (measured on MNIST, 128-wide features, 25 shots: 81 % at 64 vs 74 % at
1024), so by default it is chosen per solve from :data:`L2_GRID` by leave-one-out on the shots
themselves — exact and almost free for ridge regression, and it needs no extra labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data.datasets.subsets import dataset_labels, per_class_indices, select
from ..data.load import load_data
from ..interop.sources import LoadedModel
from ..models import VisionTransformer
from .features import extract_features

#: the bias column's value: large, so that the L2 penalty hardly touches the bias
BIAS_FEATURE = 100.0
#: the L2 strengths "auto" chooses from: 4^-3 … 4^8
L2_GRID = tuple(4.0**k for k in range(-3, 9))


class RidgeSolver:
    """``W = argmin ‖XW − Y‖² + l2‖W‖²`` for many ``l2`` from one eigendecomposition.

    ``x`` ``(N, D)`` features, ``y`` ``(N,)`` integer labels < ``num_classes``. Computed in float64.
    """

    def __init__(self, x: Tensor, y: Tensor, num_classes: int) -> None:
        x = x.double()
        self.mean = x.mean(dim=0, keepdim=True)
        self.std = x.std(dim=0, unbiased=False, keepdim=True) + 1e-5
        design = self.design(x)
        targets = 2.0 * torch.nn.functional.one_hot(y.long(), num_classes).double() - 1.0
        self.targets = targets
        # W = left · diag(1/(Λ+λ)) · right; fitted values XW = a · diag(1/(Λ+λ)) · right and the
        # hat matrix H (XW = HY) = a · diag(1/(Λ+λ)) · bᵀ, for leave-one-out.
        if design.shape[0] >= design.shape[1]:  # (XᵀX + λI)⁻¹ XᵀY with XᵀX = Q Λ Qᵀ
            self.eigenvalues, q = torch.linalg.eigh(design.T @ design)
            self.left, self.right = q, q.T @ (design.T @ targets)
            self.hat_a = self.hat_b = design @ q
        else:  # Xᵀ (XXᵀ + λI)⁻¹ Y with XXᵀ = Q Λ Qᵀ
            self.eigenvalues, q = torch.linalg.eigh(design @ design.T)
            self.left, self.right = design.T @ q, q.T @ targets
            self.hat_a, self.hat_b = q * self.eigenvalues, q

    def design(self, x: Tensor) -> Tensor:
        """Standardised features with the bias column: ``(N, D + 1)``."""
        standard = (x.double() - self.mean) / self.std
        return torch.cat([standard, torch.full_like(standard[:, :1], BIAS_FEATURE)], dim=1)

    def weights(self, l2: float) -> Tensor:
        """The solution ``(D + 1, K)`` for this L2 strength (the last row acts on the bias column)."""
        return (self.left / (self.eigenvalues + l2)) @ self.right

    def predict(self, x: Tensor, l2: float) -> Tensor:
        """Class indices ``(N,)`` for features ``x``."""
        return (self.design(x) @ self.weights(l2)).argmax(dim=1)

    def leave_one_out_residuals(self, l2: float) -> Tensor:
        """``(N, K)``: each training target minus the prediction of the fit without that sample
        (same standardisation), from the closed form (y − ŷ) / (1 − H_ii)."""
        scale = 1.0 / (self.eigenvalues + l2)
        fitted = (self.hat_a * scale) @ self.right
        leverage = (self.hat_a * self.hat_b * scale).sum(dim=1, keepdim=True)
        return (self.targets - fitted) / (1.0 - leverage).clamp(min=1e-12)

    def best_l2(self, grid: Sequence[float] = L2_GRID) -> float:
        """The strength in ``grid`` with the best leave-one-out accuracy, ties broken by the
        least leave-one-out squared error (with one shot per class, accuracy cannot tell)."""
        labels = self.targets.argmax(dim=1)

        def quality(l2: float) -> tuple[float, float]:
            residuals = self.leave_one_out_residuals(l2)
            held_out_predictions = (self.targets - residuals).argmax(dim=1)
            return float((held_out_predictions == labels).double().mean()), -float(residuals.pow(2).mean())

        return max(grid, key=quality)


@dataclass
class FewShotResult:
    """Held-out accuracy of ``shots`` images per class at one L2 strength (a number, or "auto":
    chosen per seed by leave-one-out), one value per seed; ``chosen_l2`` the strengths used."""

    shots: int
    l2: float | str
    accuracies: list[float] = field(default_factory=list)
    chosen_l2: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(torch.tensor(self.accuracies).mean())

    @property
    def std(self) -> float:
        return float(torch.tensor(self.accuracies).std(unbiased=False))


def fewshot_accuracies(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    shots: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    l2s: Sequence[float | str] = ("auto",),
) -> list[FewShotResult]:
    """For each seed and shot count, sample ``shots`` training images per class, solve once,
    score every L2 strength (or ``"auto"``) on all test features."""
    results = {(s, l2): FewShotResult(s, l2) for s in shots for l2 in l2s}
    for seed in seeds:
        for count in shots:
            chosen = per_class_indices(train_labels, count, seed=seed, num_classes=num_classes)
            solver = RidgeSolver(train_features[chosen], train_labels[chosen], num_classes)
            for l2 in l2s:
                strength = solver.best_l2() if l2 == "auto" else float(l2)
                hits = (solver.predict(test_features, strength) == test_labels).double().mean()
                results[count, l2].accuracies.append(float(hits))
                results[count, l2].chosen_l2.append(strength)
    return list(results.values())


def fewshot_evaluate(
    loaded: LoadedModel,
    data_spec: str,
    *,
    shots: Sequence[int] = (1, 5, 10, 25),
    seeds: Sequence[int] = (0, 1, 2),
    l2s: Sequence[float | str] = ("auto",),
    pool: str = "head",
    batch_size: int = 256,
) -> list[FewShotResult]:
    """Few-shot accuracy of a model's frozen features on a data spec: shots from its training
    split, scored on its held-out split. Only the sampled training images are passed through
    the model."""
    check_request(shots, seeds, l2s)  # before the data is read
    model, preprocess, _ = loaded.encoder()
    data = load_data(data_spec, in_chans=model.config.in_chans).check_image_labels(data_spec, "few-shot evaluation")
    return fewshot_of_splits(
        model,
        preprocess,
        data.train,
        data.val,
        class_names=data.class_names,
        shots=shots,
        seeds=seeds,
        l2s=l2s,
        pool=pool,
        batch_size=batch_size,
    )


def fewshot_of_splits(
    model: VisionTransformer,
    preprocess: Callable,
    train: Dataset,
    val: Dataset,
    *,
    class_names: Sequence[str],
    shots: Sequence[int],
    seeds: Sequence[int] = (0, 1, 2),
    l2s: Sequence[float | str] = ("auto",),
    pool: str = "head",
    batch_size: int = 256,
) -> list[FewShotResult]:
    """Few-shot accuracy of ``model``'s frozen features: shots drawn from ``train``, scored on all
    of ``val``. Only the sampled training images are passed through the model."""
    check_request(shots, seeds, l2s)
    num_classes = len(class_names)
    labels = dataset_labels(train)
    check_enough_shots(labels, max(shots), class_names)
    # Every shot set is a prefix of its seed's per-class permutation: the largest covers all.
    needed = torch.cat([per_class_indices(labels, max(shots), seed=s, num_classes=num_classes) for s in seeds])
    needed = needed.unique()
    features, _ = extract_features(model, select(train, needed), preprocess, pool=pool, batch_size=batch_size)
    if len(features) != len(needed):
        raise ValueError("some sampled training images are unreadable; remove them and retry")
    train_features = torch.zeros(len(labels), features.shape[1])
    train_features[needed] = features
    test_features, test_labels = extract_features(model, val, preprocess, pool=pool, batch_size=batch_size)
    return fewshot_accuracies(
        train_features, labels, test_features, test_labels, num_classes=num_classes, shots=shots, seeds=seeds, l2s=l2s
    )


def check_request(shots: Sequence[int], seeds: Sequence[int], l2s: Sequence[float | str]) -> None:
    """Shots of at least 1 per class, at least one seed, L2 strengths "auto" or finite and >= 0."""
    if not shots or min(shots) < 1:
        raise ValueError(f"shots per class must each be at least 1, got {list(shots)}")
    if not len(seeds):
        raise ValueError("give at least one seed (draw of the shots)")
    if any(l2 != "auto" and not 0 <= l2 < math.inf for l2 in l2s):  # NaN fails both comparisons
        raise ValueError(f"L2 strengths are 'auto' or finite numbers >= 0, got {list(l2s)}")


def check_enough_shots(labels: Tensor, shots: int, class_names: Sequence[str]) -> None:
    """Every class needs ``shots`` training images."""
    counts = torch.bincount(labels, minlength=len(class_names))
    if shots > counts.min():
        raise ValueError(
            f"{shots} shots per class asked for, but class {class_names[int(counts.argmin())]!r} has only "
            f"{int(counts.min())} training images"
        )
