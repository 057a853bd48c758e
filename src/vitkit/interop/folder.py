"""vitkit's own model folder: ``config.json`` + ``model.safetensors``.

``config.json`` holds the full :class:`ViTConfig`, the name the model was created from, the
class names and the preprocessing, so a folder is all that is needed to use the model
(:func:`vitkit.load_model` reads it). A multi-label classifier's folder also holds
``"problem_type": "multi_label_classification"`` (transformers' name) and its decision
``"threshold"`` on the sigmoid probabilities. A BiT ResNet's folder holds its config as
``"resnetv2"`` where a ViT's has ``"vit"``. A segmenter's folder holds its backbone's config as
``"vit"``, its decoder's as ``"decoder"`` (see :attr:`Segmenter.decoder_config`) and a colour per
class (``"colours"``); its weights keep the segmenter's keys (``backbone.*``, ``decoder.*``).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from ..data.transforms import Preprocessing, eval_transform
from ..fileio import atomic_write
from ..models import Network, ResNetV2Config, ViTConfig
from ..models.segmenter import Segmenter

FORMAT = "vitkit-model/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: the weight files a model folder (vitkit's, timm's, transformers') may hold, in the order tried:
#: safetensors first; .bin files are read with torch.load(weights_only=True)
WEIGHT_FILES = (WEIGHTS_NAME, "pytorch_model.bin")
#: transformers' ``problem_type`` of a classifier with a sigmoid per class
MULTI_LABEL = "multi_label_classification"
#: the decision threshold of a multi-label model that does not record one
DEFAULT_THRESHOLD = 0.5
#: the key under which ``config.json`` holds each kind of network's config
ARCHITECTURE_KEYS: dict[type[ViTConfig | ResNetV2Config], str] = {ViTConfig: "vit", ResNetV2Config: "resnetv2"}


def save_model(
    folder: str | Path,
    model: Network | Segmenter,
    *,
    class_names: list[str] | None = None,
    model_name: str | None = None,
    preprocessing: Preprocessing | None = None,
    threshold: float | None = None,
    colours: list[tuple[int, int, int]] | None = None,
) -> Path:
    """Write ``model`` (a ViT or a BiT ResNet, or a :class:`Segmenter` with a colour per class in ``colours``) as a
    vitkit model folder; each file is replaced atomically. ``preprocessing`` defaults to vitkit's
    own (centre crop at the model's size, [-1, 1]). ``threshold`` makes it a multi-label
    classifier: a label is predicted when its sigmoid probability is above it."""
    folder = Path(folder)
    segmenter = model if isinstance(model, Segmenter) else None
    config = segmenter.backbone.config if segmenter else model.config
    outputs = segmenter.num_classes if segmenter else config.num_classes
    names = class_names or [str(i) for i in range(outputs)]
    if outputs and len(names) != outputs:
        raise ValueError(f"{len(names)} class names given for a model with {outputs} classes")
    preprocessing = preprocessing or eval_transform(config.img_size, config.in_chans)
    document = {
        "format": FORMAT,
        "model_name": model_name,
        ARCHITECTURE_KEYS[type(config)]: config.to_dict(),
        "class_names": names,
        "preprocess": preprocessing.to_dict(),
    }
    if threshold is not None:
        document.update(problem_type=MULTI_LABEL, threshold=threshold)
    if segmenter:
        if colours is None or len(colours) != outputs:
            raise ValueError(f"a segmenter's folder needs a colour per class ({outputs}), got {colours!r}")
        document.update(decoder=segmenter.decoder_config, colours=[list(colour) for colour in colours])
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, str(tmp), metadata={"format": FORMAT}))
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(json.dumps(document, indent=2)))
    return folder
