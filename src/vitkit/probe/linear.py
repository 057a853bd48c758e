"""Linear probe: multinomial logistic regression (scikit-learn) on standardised frozen features."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..data.datasets.subsets import balanced_subset
from ..data.load import load_data
from ..interop.sources import LoadedModel
from .features import extract_features


@dataclass
class LinearProbeResult:
    top1: float
    train_images: int
    test_images: int
    #: accuracy on the probe's own training features (a large gap to top1 = overfitting)
    train_top1: float


def linear_probe(
    loaded: LoadedModel,
    data_spec: str,
    *,
    train_images: int | None = None,
    regularization: float = 1.0,
    max_iter: int = 1000,
    pool: str = "head",
    seed: int = 0,
    batch_size: int = 256,
) -> LinearProbeResult:
    """Fit logistic regression on the frozen features of the training split (all of it, or
    ``train_images`` of it with equal counts per class) and score it on the held-out split.
    ``regularization`` is scikit-learn's ``C``: the inverse L2 strength."""
    if train_images is not None and train_images < 1:  # 0 must not mean "all of them"
        raise ValueError(f"train_images must be at least 1 (or None for all), got {train_images}")
    if not 0 < regularization < math.inf:
        raise ValueError(f"regularization (C, the inverse L2 strength) must be finite and > 0, got {regularization}")
    model, preprocess, _ = loaded.encoder()
    data = load_data(data_spec, in_chans=model.config.in_chans).check_image_labels(data_spec, "a linear probe")
    train = data.train
    if train_images is not None:
        train = balanced_subset(train, train_images, num_classes=len(data.class_names), seed=seed)
    train_x, train_y = extract_features(model, train, preprocess, pool=pool, batch_size=batch_size)
    test_x, test_y = extract_features(model, data.val, preprocess, pool=pool, batch_size=batch_size)
    # Imported on use: scikit-learn takes a second to import, which every vitkit command paid.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=max_iter))
    probe.fit(train_x.numpy(), train_y.numpy())
    return LinearProbeResult(
        top1=float(probe.score(test_x.numpy(), test_y.numpy())),
        train_images=len(train_y),
        test_images=len(test_y),
        train_top1=float(probe.score(train_x.numpy(), train_y.numpy())),
    )
