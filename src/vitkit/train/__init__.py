"""Training: config and presets, optimiser and schedule, the loop, checkpoints, and scoring a
model on a dataset."""

from .accuracy import SingleLabelScores, score_model, score_single_label
from .config import PRESETS, ConfigError, TrainConfig, resolve_config
from .loop import RunSummary, TrainingDiverged, TrainingInterrupted, resume_run, train
from .multilabel import MultiLabelScores

__all__ = [
    "PRESETS",
    "ConfigError",
    "MultiLabelScores",
    "RunSummary",
    "SingleLabelScores",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "resolve_config",
    "resume_run",
    "score_model",
    "score_single_label",
    "train",
]
