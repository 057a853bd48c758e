"""Training: config and presets, optimiser and schedule, the loop, checkpoints, evaluation."""

from .accuracy import EvalResult, evaluate
from .config import PRESETS, ConfigError, TrainConfig, resolve_config
from .loop import RunSummary, TrainingDiverged, TrainingInterrupted, resume_run, train
from .multilabel import MultiLabelResult

__all__ = [
    "PRESETS",
    "ConfigError",
    "EvalResult",
    "MultiLabelResult",
    "RunSummary",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "evaluate",
    "resolve_config",
    "resume_run",
    "train",
]
