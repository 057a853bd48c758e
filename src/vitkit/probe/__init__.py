"""How good is a frozen representation? Few-shot linear evaluation (the paper's §4.1) and a
logistic-regression linear probe, both on the features of a model that is not trained further."""

from .features import FEATURE_POOLS, extract_features
from .fewshot import FewShotResult, RidgeSolver, fewshot_accuracies, fewshot_evaluate
from .linear import LinearProbeResult, linear_probe

__all__ = [
    "FEATURE_POOLS",
    "FewShotResult",
    "LinearProbeResult",
    "RidgeSolver",
    "extract_features",
    "fewshot_accuracies",
    "fewshot_evaluate",
    "linear_probe",
]
