"""vitkit's own model folder: ``config.json`` + ``model.safetensors``.

``config.json`` holds the full :class:`ViTConfig`, the name the model was created from, the
class names and the preprocessing, so a folder is all that is needed to use the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torchvision.transforms import v2

from ..data.transforms import eval_transform
from ..fileio import atomic_write
from ..models import VisionTransformer, ViTConfig

FORMAT = "vitkit-model/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the model (in eval mode), the preprocessing that turns an
    image (PIL, ndarray or tensor) into its input, and the class names of its outputs."""

    model: VisionTransformer
    preprocess: v2.Compose
    class_names: list[str]


def save_model(
    folder: str | Path,
    model: VisionTransformer,
    *,
    class_names: list[str] | None = None,
    model_name: str | None = None,
    crop_fraction: float = 1.0,
) -> Path:
    """Write ``model`` as a vitkit model folder; each file is replaced atomically."""
    folder = Path(folder)
    config = model.config
    names = class_names or [str(i) for i in range(config.num_classes)]
    if config.num_classes and len(names) != config.num_classes:
        raise ValueError(f"{len(names)} class names given for a model with {config.num_classes} classes")
    document = {
        "format": FORMAT,
        "model_name": model_name,
        "vit": config.to_dict(),
        "class_names": names,
        "preprocess": {
            "img_size": list(config.img_size),
            "in_chans": config.in_chans,
            "crop_fraction": crop_fraction,
            "mean": 0.5,
            "std": 0.5,
        },
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": FORMAT}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(document, indent=2)))
    return folder


def read_model_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a vitkit model folder, with errors that say what is wrong."""
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a vitkit model folder (expected a folder with {CONFIG_NAME})")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} is not a vitkit model folder: it has no {CONFIG_NAME} (has the run finished?)")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f'{path} is not a vitkit model config (no "format": "{FORMAT}")')
    return document


def load_model(folder: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Load a vitkit model folder (a finished run folder is one): the model in eval mode, its
    preprocessing and its class names."""
    folder = Path(folder)
    document = read_model_config(folder)
    model = VisionTransformer(ViTConfig.from_dict(document["vit"]))
    weights_path = folder / WEIGHTS_NAME
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from error
    model.load_state_dict(weights)
    pre = document["preprocess"]
    preprocess = eval_transform(tuple(pre["img_size"]), pre["in_chans"], pre.get("crop_fraction", 1.0))
    return LoadedModel(model.to(device).eval(), preprocess, list(document["class_names"]))
