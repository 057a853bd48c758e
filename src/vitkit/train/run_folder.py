"""What a run folder holds and how it is named: the conventions every command shares.

A run folder is a model folder (``config.json`` + ``model.safetensors``, see
:mod:`vitkit.interop.folder`) plus ``train_config.json`` (the resolved settings),
``checkpoint.safetensors``, ``metrics.jsonl``, ``summary.json``, ``tensorboard/`` and figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..models import ARCHITECTURE_FIELDS
from .config import TrainConfig

TRAIN_CONFIG_NAME = "train_config.json"
SUMMARY_NAME = "summary.json"


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<date>-<time>-<model>-<data>``; the model is ``custom-vit`` when ``model_args`` change
    the named architecture, so the folder never carries a name its model does not have."""
    model = config.model.replace("/", "-").replace("+", "-")
    if ARCHITECTURE_FIELDS & config.model_args.keys():
        model = "custom-vit"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}-{config.data.split('/')[-1] or 'data'}"


def run_data(folder: str | Path) -> str | None:
    """The data spec a run folder was trained on; None for anything that is not a run folder."""
    path = Path(folder) / TRAIN_CONFIG_NAME
    return json.loads(path.read_text())["data"] if path.is_file() else None


def run_setting(folder: str | Path, name: str, default: Any) -> Any:
    """A run folder's setting ``name`` (``default`` for anything that is not a run folder)."""
    path = Path(folder) / TRAIN_CONFIG_NAME
    return json.loads(path.read_text()).get(name, default) if path.is_file() else default


def run_split(folder: str | Path) -> dict[str, Any]:
    """How a run folder held images out of its data (``val_fraction``, ``seed``), for evaluating
    it on the very images it was scored on; empty for anything that is not a run folder."""
    path = Path(folder) / TRAIN_CONFIG_NAME
    if not path.is_file():
        return {}
    settings = json.loads(path.read_text())
    return {key: settings[key] for key in ("val_fraction", "seed")}


def run_metrics(folder: str | Path) -> dict[str, Any] | None:
    """The headline figures of a finished run folder (for a model card); None for other sources."""
    path = Path(folder) / SUMMARY_NAME
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    figures = {"data": run_data(folder), "epochs": summary.get("epochs"), "steps": summary.get("steps")}
    for key in ("final_top1", "final_top5", "best_top1"):
        if summary.get(key) is not None:
            figures[f"held-out {key.replace('_', ' ')}"] = f"{100 * summary[key]:.2f} %"
    return figures
