"""vitkit's own model folder: ``config.json`` + ``model.safetensors``.

``config.json`` holds the full :class:`ViTConfig`, the name the model was created from, the
class names and the preprocessing, so a folder is all that is needed to use the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from safetensors.torch import save_file
from torchvision.transforms import v2

from ..data.transforms import eval_transform
from ..fileio import atomic_write
from ..models import VisionTransformer, ViTConfig
from .files import read_weight_file
from .hf import class_names_from_hf, config_from_hf, hf_to_vitkit, is_hf_config

FORMAT = "vitkit-model/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class LoadedModel(NamedTuple):
    """What :func:`load_model` returns: the model (in eval mode), the preprocessing that turns an
    image (PIL, ndarray or tensor) into its input, and the class names of its outputs."""

    model: VisionTransformer
    preprocess: v2.Compose
    class_names: list[str]

    def require_classifier(self, what: str) -> None:
        """Refuse ``what`` (e.g. "evaluate") for an encoder without a classifier, saying what to do."""
        if not self.model.config.num_classes:
            raise ValueError(
                f"cannot {what}: this model has no classifier (a pre-trained encoder); fine-tune it with "
                "vitkit train --init MODEL, or measure its features with vitkit fewshot / vitkit linear-probe"
            )


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


def _read_folder_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a model folder, with errors that say what is wrong."""
    if not folder.exists():
        raise ValueError(f"{folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a model folder (expected a folder with {CONFIG_NAME})")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} is not a model folder: it has no {CONFIG_NAME} (has the run finished?)")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or not (document.get("format") == FORMAT or is_hf_config(document)):
        raise ValueError(f'{path} is not a vitkit model config (no "format": "{FORMAT}") nor a Hugging Face ViT config')
    return document


def folder_weights_path(folder: Path) -> Path:
    """The weight file of a vitkit or Hugging Face model folder."""
    _read_folder_config(folder)
    for name in (WEIGHTS_NAME, "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} has a {CONFIG_NAME} but no {WEIGHTS_NAME} or pytorch_model.bin")


def load_model(folder: str | Path, *, device: str = "cpu", keep_pre_logits: bool = False) -> LoadedModel:
    """Load a vitkit model folder (a finished run folder is one) or a Hugging Face ViT folder
    (as ``save_pretrained`` writes it): the model in eval mode, its preprocessing and its class
    names. A transformers pooler is dropped unless ``keep_pre_logits``, as
    ViTForImageClassification does not use it."""
    folder = Path(folder)
    document = _read_folder_config(folder)
    weights = read_weight_file(folder_weights_path(folder))
    if is_hf_config(document):
        weights = hf_to_vitkit(weights, keep_pooler=keep_pre_logits)
        config = config_from_hf(document, keep_pooler=keep_pre_logits, classifier="head.weight" in weights)
        class_names = class_names_from_hf(document) if config.num_classes else []
        crop_fraction = 1.0
    else:
        config = ViTConfig.from_dict(document["vit"])
        class_names = list(document["class_names"])
        crop_fraction = document["preprocess"].get("crop_fraction", 1.0)
    model = VisionTransformer(config)
    model.load_state_dict(weights)
    preprocess = eval_transform(config.img_size, config.in_chans, crop_fraction)
    return LoadedModel(model.to(device).eval(), preprocess, class_names)
