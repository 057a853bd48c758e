"""The one place that decides what a weight source holds.

:func:`open_weights` turns any source into a :class:`Weights`: the architecture, the state dict
with vitkit's keys, the class names and the preprocessing. Sources, in the order they are
recognised:

- a folder: vitkit's (a finished run folder is one), transformers' (``save_pretrained``) or
  timm's hub layout (``config.json`` with ``architecture``);
- a file: a Google ``.npz`` (self-describing), or a bare weight file (``.safetensors``,
  ``.pth``/``.pt``/``.bin``) in timm's, transformers' or vitkit's layout, including a vitkit
  ``checkpoint.safetensors``; a bare file needs the architecture named (``architecture=``);
- ``hf-hub:ORG/REPO[@REVISION]``: a Hugging Face Hub repo in timm's or transformers' layout;
- ``google:DIR/FILE``: a file of Google's public ``vit_models`` bucket, e.g.
  ``google:imagenet21k/ViT-B_16``;
- a pretrained name: timm's ``arch.tag``, or a bare architecture meaning its default tag
  (the table in :mod:`vitkit.interop.pretrained`).

Everything that loads weights goes through here: :func:`load_model`, :func:`load_weights`,
:func:`create_model`, ``vitkit convert`` and ``vitkit train --init``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.transforms import Preprocessing, eval_transform
from ..models import (
    FeatureMaps,
    ModelConfig,
    Network,
    ResNetV2Config,
    VisionTransformer,
    ViTConfig,
    build_network,
    get_config,
)
from ..models.segmenter import DECODERS, Segmenter
from .adapt import LoadReport, load_state_into
from .download import fetch_google_file
from .files import read_weight_file
from .folder import ARCHITECTURE_KEYS, CONFIG_NAME, DEFAULT_THRESHOLD, FORMAT, MULTI_LABEL, WEIGHT_FILES
from .hf import class_names_from_hf, config_from_hf, hf_to_vitkit, is_hf_config, is_hf_state, preprocessing_from_hf
from .hub import hub_snapshot, is_hub_id
from .keys import upgrade_vitkit_keys
from .npz import config_from_npz, npz_to_vitkit, read_npz
from .pretrained import IMAGENET21K_NAMES_HINT, find_pretrained, imagenet1k_class_names
from .timm import (
    class_names_from_timm,
    config_from_timm,
    is_timm_config,
    is_timm_state,
    preprocessing_from_timm,
    timm_data_config,
    timm_to_vitkit,
)

logger = logging.getLogger(__name__)

GOOGLE_PREFIX = "google:"
#: the largest mask transformer a model folder may ask for (Segmenter's have 2 blocks, ViT-L's width)
MAX_DECODER_DEPTH, MAX_DECODER_DIM = 32, 4096
#: set to 1 to load weights holding NaN or Inf with a warning instead of an error (``--allow-nonfinite``)
ALLOW_NONFINITE_ENV = "VITKIT_ALLOW_NONFINITE"
_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz", ".json")


@dataclass
class Weights:
    """What a weight source holds, in vitkit's terms."""

    #: the source as given
    source: str
    #: the network's: a ViT's, or a BiT ResNet's
    config: ModelConfig
    #: the tensors, with vitkit's keys
    state: dict[str, Tensor]
    class_names: list[str]
    preprocessing: Preprocessing
    #: the model name recorded with the weights (vitkit folders, pretrained names), if any
    model_name: str | None = None
    #: something the user should know, e.g. where to get class names the source lacks
    note: str | None = None
    #: a multi-label classifier's decision threshold on its sigmoid probabilities; None: one
    #: class per image (softmax)
    threshold: float | None = None
    #: a segmenter's: its decoder (:attr:`Segmenter.decoder_config`), the decoder's tensors, and a
    #: colour per class; ``config`` and ``state`` are then its backbone's
    decoder_config: dict[str, Any] | None = None
    decoder_state: dict[str, Tensor] | None = None
    colours: list[tuple[int, int, int]] | None = None

    def build_model(self, **changes: Any) -> Network:
        """The model these weights are for, holding them (in training mode, on the CPU). ``changes``
        are config fields to change first (``num_classes``, ``img_size``, ``dropout``, ...);
        position embeddings and the head adapt as :func:`~vitkit.interop.adapt.load_state_into`
        says. ``pretrained_cfg`` tells timm's data helpers the weights' preprocessing."""
        model = build_network(self.config.replace(**changes))
        load_state_into(model, self.state, source=self.source)
        model.pretrained_cfg = timm_data_config(self.preprocessing)
        return model

    def build_segmenter(self) -> Segmenter:
        """The segmenter these weights are for, holding them (in training mode, on the CPU)."""
        if self.decoder_config is None or self.decoder_state is None:
            raise ValueError(f"{self.source} holds a classifier or an encoder, not a segmenter")
        backbone = self.build_model()
        if not isinstance(backbone, VisionTransformer):
            raise ValueError(f"{self.source}: a segmenter's backbone is a ViT, not {self.config.describe()}")
        segmenter = Segmenter(backbone, **self.decoder_config)
        try:
            segmenter.decoder.load_state_dict(self.decoder_state)
        except RuntimeError as error:  # missing, unexpected or wrongly shaped tensors
            raise ValueError(f"{self.source}: the decoder's weights do not fit its config: {error}") from None
        return segmenter


def open_weights(
    source: str | Path,
    *,
    architecture: str | ViTConfig | None = None,
    keep_pre_logits: bool = False,
    allow_nonfinite: bool | None = None,
) -> Weights:
    """Read ``source`` (see the module docstring for what it may be), downloading it first when it
    names a hub repo, a Google file or pretrained weights that are not cached yet.

    ``architecture`` says what a bare weight file is (a model name such as ``"S/16"``, whose class
    count, resolution and channels are then read off the tensors, or a full config); other sources
    carry their own. A pre-logits layer (Google's ``pre_logits``, transformers' pooler) is kept
    when a classifier sits on it or when ``keep_pre_logits``.

    Weights that cannot be right are refused, naming the tensor: a tensor that is not floating
    point, or one holding NaN or Inf. ``allow_nonfinite=True`` (default: the environment variable
    ``VITKIT_ALLOW_NONFINITE=1``; the CLI's ``--allow-nonfinite``) loads the latter with a warning."""
    weights = _open(source, architecture, keep_pre_logits)
    if allow_nonfinite is None:
        allow_nonfinite = os.environ.get(ALLOW_NONFINITE_ENV, "").lower() in ("1", "true", "yes", "on")
    _check_values(weights, allow_nonfinite)
    return weights


def _check_values(weights: Weights, allow_nonfinite: bool) -> None:
    """Refuse tensors that no trained ViT holds: integers or bools (every weight is a float), and
    NaN or Inf, which a diverged run or a damaged file leaves and every output would inherit."""
    nonfinite = []
    decoder = {f"decoder.{key}": value for key, value in (weights.decoder_state or {}).items()}
    for key, value in {**weights.state, **decoder}.items():
        if not value.is_floating_point():
            raise ValueError(
                f"{weights.source}: tensor {key} is {str(value.dtype).removeprefix('torch.')} where a ViT's "
                "weights are floating point; this is no weight file vitkit reads (or it was quantised by "
                "another tool: load the float original)"
            )
        bad = value.numel() - int(torch.isfinite(value).sum())
        if bad:
            nonfinite.append(f"{key} ({bad:,} of {value.numel():,} values)")
    if not nonfinite:
        return
    where = f"{weights.source}: {len(nonfinite)} tensor(s) hold NaN or Inf: {', '.join(nonfinite[:3])}"
    where += ", …" if len(nonfinite) > 3 else ""
    if not allow_nonfinite:
        raise ValueError(
            f"{where}. Weights like these come from a diverged run or a damaged file and give NaN outputs; "
            f"load them anyway with --allow-nonfinite ({ALLOW_NONFINITE_ENV}=1, or allow_nonfinite=True)"
        )
    logger.warning(f"LOADING NON-FINITE WEIGHTS (--allow-nonfinite): {where}")


def _open(source: str | Path, architecture: str | ViTConfig | None, keep_pre_logits: bool) -> Weights:
    text = str(source)
    path = Path(source)
    if path.exists():
        return _open_folder(path, keep_pre_logits) if path.is_dir() else _open_file(path, architecture, keep_pre_logits)
    if is_hub_id(text):
        return _named(_open_folder(hub_snapshot(text), keep_pre_logits), text)
    if text.startswith(GOOGLE_PREFIX):
        file = text.removeprefix(GOOGLE_PREFIX).strip("/")
        local = fetch_google_file(file if file.endswith(".npz") else f"{file}.npz")
        return _named(_open_npz(local, keep_pre_logits), text)
    try:
        row = find_pretrained(text)
    except ValueError as error:
        if _looks_like_a_path(path):
            raise ValueError(f"{source} does not exist") from error
        raise ValueError(f"{source} is no file or folder, and: {error}") from error
    return _named(_open(row.source, None, keep_pre_logits), row.name)


def _looks_like_a_path(path: Path) -> bool:
    """A weight-file name, or a path inside an existing folder (``B/16`` and ``arch.tag`` are names)."""
    return (
        path.suffix.lower() in _FILE_SUFFIXES or path.is_absolute() or (path.parent.is_dir() and path.parent != Path())
    )


def _named(weights: Weights, name: str) -> Weights:
    weights.source = weights.model_name = name
    return weights


# ------------------------------------------------------------------ folders
def _open_folder(folder: Path, keep_pre_logits: bool) -> Weights:
    document = _folder_config(folder)
    state = read_weight_file(_weight_file(folder))
    if document.get("format") == FORMAT:
        try:
            config = _architecture(document)
            preprocess = {"img_size": config.img_size, "in_chans": config.in_chans, **document.get("preprocess", {})}
            preprocessing = Preprocessing.from_dict(preprocess)
            names = list(document["class_names"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{folder / CONFIG_NAME} does not describe a model vitkit can build: {error}") from error
        if config.num_classes and len(names) != config.num_classes:
            raise ValueError(
                f"{folder / CONFIG_NAME} names {len(names)} classes for a model with {config.num_classes} outputs"
            )
        weights = Weights(
            str(folder),
            config,
            upgrade_vitkit_keys(state),
            names,
            preprocessing,
            model_name=document.get("model_name"),
            threshold=_threshold(document, folder / CONFIG_NAME),
        )
        return _segmenter_parts(weights, document, folder / CONFIG_NAME) if "decoder" in document else weights
    if is_hf_config(document):
        state = hf_to_vitkit(state, keep_pooler=keep_pre_logits)
        config = config_from_hf(document, keep_pooler=keep_pre_logits, classifier="head.weight" in state)
        processor_file = folder / "preprocessor_config.json"
        processor = _read_json(processor_file) if processor_file.is_file() else None
        names = class_names_from_hf(document) if config.num_classes else []
        preprocessing = preprocessing_from_hf(processor, config)
        return Weights(
            str(folder), config, state, names, preprocessing, threshold=_threshold(document, folder / CONFIG_NAME)
        )
    config = config_from_timm(document)
    names, note = _class_names(config.num_classes, class_names_from_timm(document))
    state = timm_to_vitkit(state)
    return Weights(str(folder), config, state, names, preprocessing_from_timm(document, config), note=note)


def _segmenter_parts(weights: Weights, document: dict[str, Any], path: Path) -> Weights:
    """A segmenter folder's weights: the backbone's tensors as ``state``, the decoder's apart; its
    decoder config and colours checked, so a damaged or hostile file is refused, not built."""
    decoder, colours, classes = document["decoder"], document.get("colours"), len(weights.class_names)
    if not (
        isinstance(decoder, dict)
        and decoder.keys() == {"num_classes", "decoder", "decoder_depth", "decoder_dim"}
        and decoder["num_classes"] == classes
        and decoder["decoder"] in DECODERS
        and isinstance(decoder["decoder_depth"], int)
        and 1 <= decoder["decoder_depth"] <= MAX_DECODER_DEPTH
        and (decoder["decoder_dim"] is None or isinstance(decoder["decoder_dim"], int))
        and 1 <= (decoder["decoder_dim"] or 1) <= MAX_DECODER_DIM
    ):
        raise ValueError(
            f'{path}: "decoder" must be {{"num_classes": {classes}, "decoder": one of {", ".join(DECODERS)}, '
            f'"decoder_depth": 1-{MAX_DECODER_DEPTH}, "decoder_dim": null or 1-{MAX_DECODER_DIM}}}, got {decoder!r}'
        )
    if not (
        isinstance(colours, list)
        and len(colours) == classes
        and all(
            isinstance(c, list) and len(c) == 3 and all(type(v) is int and 0 <= v <= 255 for v in c) for c in colours
        )
    ):
        raise ValueError(f'{path}: "colours" must give an [r, g, b] colour (0-255) per class')
    parts: dict[str, dict[str, Tensor]] = {"backbone.": {}, "decoder.": {}}
    for key, value in weights.state.items():
        prefix = next((p for p in parts if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"{path.parent}: tensor {key} is neither the backbone's nor the decoder's")
        parts[prefix][key.removeprefix(prefix)] = value
    weights.state, weights.decoder_state = parts["backbone."], parts["decoder."]
    weights.decoder_config = decoder
    weights.colours = [(c[0], c[1], c[2]) for c in colours]
    return weights


def _architecture(document: dict[str, Any]) -> ModelConfig:
    """The network config of a vitkit ``config.json``: under ``"vit"`` or ``"resnetv2"``."""
    kinds = {key: kind for kind, key in ARCHITECTURE_KEYS.items() if key in document}
    if len(kinds) != 1:
        raise KeyError(f"one architecture, under {' or '.join(map(repr, ARCHITECTURE_KEYS.values()))}")
    ((key, kind),) = kinds.items()
    return kind.from_dict(document[key])


def _threshold(document: dict[str, Any], path: Path) -> float | None:
    """A multi-label model's decision threshold (0.5 where the folder records none); None for others."""
    if document.get("problem_type") != MULTI_LABEL:
        return None
    threshold = document.get("threshold", DEFAULT_THRESHOLD)
    if not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ValueError(f"{path}: threshold must be a probability between 0 and 1, got {threshold!r}")
    return float(threshold)


def _folder_config(folder: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a vitkit, transformers or timm model folder."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{folder} is not a model folder: it has no {CONFIG_NAME} (has the run finished?)")
    document = _read_json(path)
    if not isinstance(document, dict) or not (
        document.get("format") == FORMAT or is_hf_config(document) or is_timm_config(document)
    ):
        raise ValueError(
            f'{path} is not a vitkit model config ("format": "{FORMAT}"), nor a transformers ViT config '
            "(model_type vit), nor a timm hub config (architecture + pretrained_cfg)"
        )
    return document


def _weight_file(folder: Path) -> Path:
    found = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if found is None:
        raise ValueError(f"{folder} has a {CONFIG_NAME} but no {' or '.join(WEIGHT_FILES)}")
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


# ------------------------------------------------------------------ files
def _open_npz(path: Path, keep_pre_logits: bool) -> Weights:
    arrays = read_npz(path)
    config = config_from_npz(arrays)
    state = npz_to_vitkit(arrays, hybrid=bool(config.hybrid_layers))
    if config.representation_size and not config.num_classes and not keep_pre_logits:
        config = config.replace(representation_size=None)
        state = {k: v for k, v in state.items() if not k.startswith("pre_logits.")}
    names, note = _class_names(config.num_classes)
    # vit_jax evaluates on a bilinear resize to the full size, no crop
    return Weights(str(path), config, state, names, Preprocessing(config.img_size, config.in_chans), note=note)


def _open_file(path: Path, architecture: str | ViTConfig | None, keep_pre_logits: bool) -> Weights:
    if path.suffix.lower() == ".npz":
        return _open_npz(path, keep_pre_logits)
    state = read_weight_file(path)
    if is_timm_state(state):
        state = timm_to_vitkit(state)
    elif is_hf_state(state):
        state = hf_to_vitkit(state, keep_pooler=keep_pre_logits)
    else:
        state = upgrade_vitkit_keys(state)
    if architecture is None:
        raise ValueError(
            f"{path} is a bare weight file with no architecture in it; name one with --architecture (e.g. S/16)"
        )
    config = architecture if isinstance(architecture, ViTConfig) else _config_of_state(state, architecture)
    names, note = _class_names(config.num_classes)
    name = architecture if isinstance(architecture, str) else None
    return Weights(str(path), config, state, names, eval_transform(config.img_size, config.in_chans), name, note)


def _config_of_state(state: dict[str, Tensor], name: str) -> ModelConfig:
    """Architecture ``name`` with the class count, resolution and channels the tensors have."""
    config = get_config(name)
    if isinstance(config, ResNetV2Config):  # convolutions fit any resolution: the name's stays
        classes = state["head.fc.weight"].shape[0] if "head.fc.weight" in state else 0
        channels = state["stem.conv.weight"].shape[1] if "stem.conv.weight" in state else config.in_chans
        return config.replace(num_classes=classes, in_chans=channels)
    changes: dict[str, Any] = {"num_classes": state["head.weight"].shape[0] if "head.weight" in state else 0}
    if "patch_embed.proj.weight" in state:
        changes["in_chans"] = state["patch_embed.proj.weight"].shape[1]
    if "pos_embed" in state and config.pos_embed == "learn":
        side = math.isqrt(state["pos_embed"].shape[1] - config.num_prefix_tokens)
        changes["img_size"] = side * config.stride
    if "pre_logits.0.weight" in state:
        changes["representation_size"] = state["pre_logits.0.weight"].shape[0]
    return config.replace(**changes)


def _class_names(num_classes: int, names: list[str] | None = None) -> tuple[list[str], str | None]:
    """The source's names, else ImageNet-1k's for 1,000 classes, else numbers (with a note for 21k)."""
    if names and len(names) == num_classes:
        return names, None
    if num_classes == 1000:
        return imagenet1k_class_names(), None
    note = IMAGENET21K_NAMES_HINT if num_classes == 21843 else None
    return [str(i) for i in range(num_classes)], note


# ------------------------------------------------------------------ using them
def read_class_names(path: str | Path, num_classes: int) -> list[str]:
    """One class name per line of a text file (blank lines at the end ignored), one per output."""
    try:
        names = Path(path).read_text().rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read class names from {path}: {error}") from error
    if len(names) != num_classes:
        raise ValueError(f"{path} holds {len(names)} class names but the model has {num_classes} outputs")
    return [name.strip() for name in names]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weight file or a model folder, with the source's own key names."""
    path = Path(path)
    if path.is_dir():
        _folder_config(path)
        path = _weight_file(path)
    return read_weight_file(path)


def load_weights(
    model: Network,
    source: str | Path,
    *,
    keep_pre_logits: bool = False,
    allow_nonfinite: bool | None = None,
) -> LoadReport:
    """Load any source :func:`open_weights` reads into ``model``, adapting position embeddings and
    the head (see :func:`vitkit.interop.adapt.load_state_into`). Returns what happened to each key."""
    weights = open_weights(
        source, architecture=model.config, keep_pre_logits=keep_pre_logits, allow_nonfinite=allow_nonfinite
    )
    return load_state_into(model, weights.state, source=str(source))


@dataclass(frozen=True)
class LoadedModel:
    """What :func:`load_model` returns: the model (in eval mode), the preprocessing that turns an
    image (PIL, ndarray or tensor) into its input, the class names of its outputs, and for a
    multi-label classifier the decision threshold on its sigmoid probabilities. It unpacks as
    ``model, preprocess, class_names = load_model(...)``."""

    model: Network | Segmenter
    preprocess: Preprocessing
    class_names: list[str]
    threshold: float | None = None
    #: a segmenter's colour per class (None for a classifier or an encoder)
    colours: list[tuple[int, int, int]] | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.preprocess, self.class_names))

    @property
    def segmenter(self) -> bool:
        """Whether the model gives a class per pixel (a :class:`Segmenter`) rather than per image."""
        return isinstance(self.model, Segmenter)

    @property
    def multi_label(self) -> bool:
        """Whether the model predicts a set of labels (a sigmoid per class) rather than one class."""
        return self.threshold is not None

    def encoder(self) -> LoadedModel:
        """This model, or a segmenter's backbone as a model of its own (its features, its attention)."""
        if not isinstance(self.model, Segmenter):
            return self
        return dataclasses.replace(self, model=self.model.backbone, class_names=[], colours=None)

    @property
    def config(self) -> ModelConfig:
        """The network's configuration (a segmenter's: its backbone's)."""
        return self.model.backbone.config if isinstance(self.model, Segmenter) else self.model.config

    def require_classifier(self, what: str) -> None:
        """Refuse ``what`` (e.g. "evaluate") for an encoder without a classifier, or a segmenter,
        saying what to do."""
        if isinstance(self.model, Segmenter):
            raise ValueError(
                f"cannot {what} this way: the model is a segmenter (a class per pixel); use vitkit.segment "
                "(segment_image, segment_files, score_segmenter), or vitkit predict / eval, which segment"
            )
        if not self.model.config.num_classes:
            raise ValueError(
                f"cannot {what}: this model has no classifier (a pre-trained encoder); fine-tune it with "
                "vitkit train --init MODEL, or measure its features with vitkit fewshot / vitkit linear-probe"
            )

    def class_index(self, name_or_index: str | int) -> int:
        """The output index of a class given by name (as in ``class_names``) or by index."""
        if isinstance(name_or_index, str) and name_or_index in self.class_names:
            return self.class_names.index(name_or_index)
        try:
            index = int(name_or_index)
        except ValueError:
            close = difflib.get_close_matches(str(name_or_index), self.class_names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"the model has no class {name_or_index!r}{hint}") from None
        if not 0 <= index < len(self.class_names):
            raise ValueError(f"class index {index} is out of range: the model has {len(self.class_names)} classes")
        return index


def load_model(
    source: str | Path,
    *,
    device: str = "cpu",
    keep_pre_logits: bool = False,
    architecture: str | None = None,
    class_names: str | Path | None = None,
    allow_nonfinite: bool | None = None,
) -> LoadedModel:
    """A ready-to-use model from any source :func:`open_weights` reads (a run or model folder, a
    Google ``.npz``, ``hf-hub:ORG/REPO``, ``google:DIR/FILE``, a pretrained name such as
    ``vit_base_patch16_224.augreg2_in21k_ft_in1k``, or a bare weight file with its ``architecture``):
    the model in eval mode, the preprocessing that came with the weights, and the class names
    (those of the weights, or one per line of the text file ``class_names``). Weights holding NaN
    or Inf are refused unless ``allow_nonfinite`` (see :func:`open_weights`)."""
    weights = open_weights(
        source, architecture=architecture, keep_pre_logits=keep_pre_logits, allow_nonfinite=allow_nonfinite
    )
    if class_names is not None:
        outputs = len(weights.class_names) if weights.decoder_config else weights.config.num_classes
        weights.class_names = read_class_names(class_names, outputs)
    elif weights.note:
        logger.warning(weights.note)
    model = weights.build_segmenter() if weights.decoder_config else weights.build_model()
    return LoadedModel(
        model.to(device).eval(), weights.preprocessing, weights.class_names, weights.threshold, weights.colours
    )


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    **overrides: Any,
) -> Network | FeatureMaps:
    """Build a registered model (a ViT, or a BiT ResNet): initialised as the reference does, or
    from pretrained weights.

    Args:
        name: a registered name (``"vit_base_patch16_224"``), alias (``"B/16"``) or timm's
            ``arch.tag``: without ``pretrained`` that builds the architecture with the tag's class
            count, resolution and input preparation, as timm does.
        pretrained: True for the name's weights (a bare architecture means its default tag, as
            in timm), or a tag such as ``"augreg_in21k"``; downloaded on first use.
        weights: any other source :func:`open_weights` reads (file, folder, ``hf-hub:...``).
        num_classes: classifier outputs (0: the model returns pooled features); by default the
            pretrained weights' count, else 1000. Another count than the weights' gets a new zero head.
        img_size: resolution (int or (height, width)); by default the pretrained weights' or the
            name's. Position embeddings are resampled to it (paper §3.2).
        in_chans: image channels (1 for grayscale); default 3.
        **overrides: any other :class:`ViTConfig` field, e.g. ``pool="avg"``, ``drop_path=0.1``;
            timm's spellings work too (``global_pool``, ``drop_rate``, ``drop_path_rate``), and
            ``features_only=True`` (with ``out_indices``, default the last 3 blocks) returns a
            :class:`FeatureMaps` of per-block feature maps, as timm's does; ``device`` and
            ``dtype`` place the model.

    Examples:
        >>> model = create_model("vit_base_patch16_224", pretrained=True)  # doctest: +SKIP
        >>> scratch = create_model("S/16", num_classes=10, img_size=32, patch_size=4)
    """
    if pretrained and weights is not None:
        raise ValueError("give pretrained= or weights=, not both")
    features_only, out_indices = overrides.pop("features_only", False), overrides.pop("out_indices", 3)
    feature_cls = overrides.pop("feature_cls", "getter")
    if feature_cls != "getter":
        raise ValueError(f"feature_cls={feature_cls!r}: vitkit's feature maps come from forward_intermediates (getter)")
    device, dtype = overrides.pop("device", None), overrides.pop("dtype", None)
    model = _create_model(name, pretrained, weights, num_classes, img_size, in_chans, _vitkit_spellings(overrides))
    model.to(device=device, dtype=dtype)
    if features_only and not isinstance(model, VisionTransformer):
        raise ValueError(f"features_only gives a ViT's per-block feature maps; {name} is a ResNet")
    return FeatureMaps(model, out_indices) if features_only else model


def create_segmenter(
    name: str,
    num_classes: int,
    *,
    decoder: str = "linear",
    decoder_depth: int = 2,
    decoder_dim: int | None = None,
    pretrained: bool | str = False,
    weights: str | Path | None = None,
    **backbone: Any,
) -> Segmenter:
    """A :class:`~vitkit.models.segmenter.Segmenter` for ``num_classes`` classes (the background
    among them) on the backbone :func:`create_model` builds from ``name``, ``pretrained``,
    ``weights`` and ``backbone`` (``img_size``, ``in_chans``, ``drop_path``, ...), its classifier
    dropped. ``decoder`` is ``"linear"`` or ``"mask"`` (Segmenter's mask transformer, with
    ``decoder_depth`` blocks of width ``decoder_dim``, by default the backbone's).

    Examples:
        >>> segmenter = create_segmenter("S/16", num_classes=21, decoder="mask", img_size=64)
    """
    encoder = create_model(name, pretrained=pretrained, weights=weights, num_classes=0, **backbone)
    if not isinstance(encoder, VisionTransformer):
        raise ValueError(f"a segmenter's backbone is a ViT; {name} is a ResNet")
    return Segmenter(encoder, num_classes, decoder=decoder, decoder_depth=decoder_depth, decoder_dim=decoder_dim)


def _create_model(
    name: str,
    pretrained: bool | str,
    weights: str | Path | None,
    num_classes: int | None,
    img_size: int | tuple[int, int] | None,
    in_chans: int | None,
    overrides: dict[str, Any],
) -> Network:
    sizes = {k: v for k, v in (("img_size", img_size), ("in_chans", in_chans)) if v is not None}
    if not pretrained and "." in name and weights is None:  # timm's arch.tag: the tag's head and inputs
        row = find_pretrained(name)
        classes = row.num_classes if num_classes is None else num_classes
        sizes = {"img_size": row.img_size, **sizes}
        model = build_network(get_config(row.architecture or name, num_classes=classes, **sizes, **overrides))
        model.pretrained_cfg = {f: getattr(row, f) for f in ("mean", "std", "interpolation", "crop_pct", "crop_mode")}
        return model
    if not pretrained:
        classes = 1000 if num_classes is None else num_classes
        model = build_network(get_config(name, num_classes=classes, **sizes, **overrides))
        if weights is not None:
            load_weights(model, weights)
        return model
    row = find_pretrained(name, None if pretrained is True else pretrained)
    source = open_weights(row.source)
    classes = source.config.num_classes if num_classes is None else num_classes
    return source.build_model(num_classes=classes, **sizes, **overrides)


#: timm's keyword arguments for what vitkit's ViTConfig names otherwise
TIMM_SPELLINGS = {"global_pool": "pool", "drop_rate": "dropout", "drop_path_rate": "drop_path"}


def _vitkit_spellings(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with timm's argument names turned into vitkit's (both are accepted)."""
    renamed = {TIMM_SPELLINGS.get(key, key): value for key, value in overrides.items()}
    clashes = [key for key in TIMM_SPELLINGS if key in overrides and TIMM_SPELLINGS[key] in overrides]
    if clashes:
        raise ValueError(f"give {clashes[0]}= or {TIMM_SPELLINGS[clashes[0]]}=, not both")
    return renamed
