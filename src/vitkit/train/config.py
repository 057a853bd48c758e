"""A training run as data: preset ← config file ← command-line flags, saved in the run folder."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..data.datasets.builtin import BUILTIN
from ..data.load import TASKS, detect_task
from ..models import ATTENTION_KERNELS, ResNetV2Config, get_config
from ..models.config import type_errors
from ..models.segmenter import DECODERS
from . import presets

#: the recipes shipped as presets/<name>.toml
PRESETS = tuple(
    sorted(Path(item.name).stem for item in resources.files(presets).iterdir() if item.name.endswith(".toml"))
)
OBJECTIVES = ("classify", "mpp", "mae")


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field whose ``help`` becomes the command-line help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Every setting of a training run. Field help texts are the CLI's help texts."""

    # data
    data: str = _opt(
        "mnist",
        "built-in dataset (digits, mnist, mnist-canvases), an ImageFolder folder, a path,label CSV, or a "
        "segmentation set (images/ + masks/ folders, an image,mask CSV)",
    )
    task: str = _opt(
        "auto",
        "classification or segmentation; auto: segmentation when the data is laid out as a segmentation set",
        choices=TASKS,
        only="classify",
    )
    val_fraction: float = _opt(0.1, "held-out fraction when the data has no val/ split (per class, seeded)")
    multi_label: bool = _opt(
        False,
        "CSV data: several labels per image (sigmoid outputs, binary cross-entropy, ranked by mAP) even when no "
        "row lists several; a ';' in any label, or a path,<class>,<class>,... header, means multi-label anyway",
        only="classify",
    )
    train_images: int | None = _opt(
        None, "use only this many training images, equally many per class (seeded): few-label experiments"
    )
    img_size: int | None = _opt(None, "training resolution in pixels (default: the data's size, or 224 for files)")
    in_chans: int | None = _opt(None, "image channels for files: 1 gray, 3 RGB (built-in datasets are gray)")
    crop_scale: list[float] | None = _opt(
        None, "random-resized crop area range, e.g. 0.08 1.0; none for no crop augmentation", nargs=2
    )
    flip: bool | None = _opt(None, "random horizontal flips (default: on, off for digits and MNIST)")
    randaugment: int | None = _opt(
        None, "RandAugment magnitude 0-30, or none (batched: two colour operations per image at this magnitude)"
    )
    rotate: float = _opt(0.0, "random rotation, ± degrees")
    translate: float = _opt(0.0, "random translation, ± fraction of the image size")
    shear: float = _opt(0.0, "random horizontal shear, ± degrees")
    zoom: list[float] | None = _opt(
        None, "random content scale range, e.g. 0.9 1.1 (below 1 shrinks the image in its frame)", nargs=2
    )
    erase: float = _opt(0.0, "probability of blacking out one random box (a fiftieth to a third of the area) per image")
    batch_augment: bool | None = _opt(
        None,
        "augment whole batches on the training device (default: on for in-memory data, --cache-decoded folders "
        "and shards, whose workers then only decode; off for other files, augmented per image in the loader)",
    )
    mixup: float = _opt(0.0, "Mixup Beta(α, α) parameter; 0 = off", only="classify")
    cutmix: float = _opt(0.0, "CutMix Beta(α, α) parameter; 0 = off", only="classify")
    workers: int = _opt(0, "data-loader worker processes (0 = load in the training process)")
    cache_decoded: bool | None = _opt(
        None,
        "folders and CSVs: decode every image once at the training size into a memory-mapped cache "
        "($VITKIT_HOME/decoded, renewed when files change), then train from it as from in-memory data "
        "(default: when the decoded images take at most a quarter of the machine's memory)",
    )
    shuffle_buffer: int = _opt(10_000, "shard streams (vitkit shards): samples held in the shuffle buffer")
    # model
    model: str = _opt("S/16", "model name or alias (vitkit models lists them)")
    model_args: dict[str, Any] = _opt(
        {}, "model config overrides as KEY=VALUE, e.g. patch_size=7 embed_dim=128 (repeatable)", nargs="*"
    )
    dropout: float = _opt(0.0, "dropout after the position embeddings, in the MLP and after attention")
    drop_path: float = _opt(0.0, "stochastic depth rate of the last block (rising linearly from 0)")
    # optimisation
    optimizer: str = _opt("adamw", "adamw, adam or sgd", choices=("adamw", "adam", "sgd"))
    lr: float = _opt(1e-3, "peak learning rate")
    lr_batch_base: int | None = _opt(
        None, "if set, the learning rate is lr × global batch / lr_batch_base (the linear scaling rule, as DeiT)"
    )
    layer_decay: float | None = _opt(
        None,
        "layer-wise learning-rate decay for fine-tuning, e.g. 0.75: the last block trains at 0.75 × lr, the one "
        "below at 0.75² × lr, ..., the embeddings slowest; the head at lr (BEiT, MAE)",
    )
    weight_decay: float = _opt(0.05, "decoupled weight decay (never on biases, norms, tokens, position embeddings)")
    betas: list[float] = _opt([0.9, 0.999], "Adam β1 β2", nargs=2)
    momentum: float = _opt(0.9, "SGD momentum")
    schedule: str = _opt(
        "cosine",
        "learning-rate decay after warmup: cosine, linear, poly ((1 - progress)^0.9, segmentation's) or constant",
        choices=("cosine", "linear", "poly", "constant"),
    )
    warmup_epochs: float = _opt(0.0, "linear warmup length in epochs (fractions allowed)")
    warmup_steps: int | None = _opt(None, "linear warmup length in optimiser steps (replaces warmup_epochs)")
    epochs: float = _opt(10.0, "training length in epochs (fractions allowed)")
    steps: int | None = _opt(None, "training length in optimiser steps (replaces epochs)")
    min_steps: int | None = _opt(
        None, "train at least this many optimiser steps, however few the epochs make: a small set is seen more often"
    )
    batch_size: int = _opt(128, "images per optimiser micro-batch")
    accum_steps: int = _opt(1, "micro-batches per optimiser step (global batch = batch_size × accum_steps × processes)")
    grad_clip: float = _opt(1.0, "clip the global gradient norm to this value; 0 = no clipping")
    label_smoothing: float = _opt(
        0.0, "label smoothing of the cross-entropy (multi-label: targets y(1-ε) + ε/2)", only="classify"
    )
    ema: float = _opt(0.0, "keep an exponential moving average of the weights with this decay, e.g. 0.9999; 0 = off")
    # self-supervised pre-training (vitkit pretrain)
    objective: str = _opt(
        "classify",
        "mpp (masked patch prediction) or mae (masked autoencoder); classify = supervised (vitkit train)",
        choices=OBJECTIVES,
        flag_choices=OBJECTIVES[1:],  # classification is vitkit train, not a pretrain objective
        only="pretrain",
    )
    mask_ratio: float | None = _opt(
        None,
        "fraction of patches corrupted (mpp; default 0.5) or hidden from the encoder (mae; default 0.75)",
        only="pretrain",
    )
    color_bits: int = _opt(
        3, "mpp: bits per channel of the predicted mean colour (3: 512 RGB / 8 gray classes)", only="pretrain"
    )
    decoder_dim: int | None = _opt(
        None, "decoder width (mae: default 512; segmentation's mask transformer: default the backbone's)"
    )
    decoder_depth: int | None = _opt(None, "decoder blocks (mae: default 8; segmentation's mask transformer: 2)")
    decoder_heads: int = _opt(16, "mae: decoder attention heads", only="pretrain")
    norm_pix_loss: bool = _opt(
        True, "mae: reconstruct pixels normalised per patch (the MAE paper's best target)", only="pretrain"
    )
    # segmentation
    decoder: str = _opt(
        "linear",
        "segmentation: Segmenter's linear decoder (patch tokens → class logits) or its mask transformer (mask)",
        choices=DECODERS,
        only="classify",
    )
    ignore_index: int = _opt(255, "segmentation: the mask value of pixels that count for nothing", only="classify")
    dice: float = _opt(
        0.0, "segmentation: weight of a soft Dice loss added to the cross-entropy (0 = off)", only="classify"
    )
    # evaluation at epoch ends
    eval_every: int | None = _opt(
        None,
        "evaluate every N epochs (and after the last); default: every epoch, or about 20 times a run when a small "
        "set makes it longer than 40 epochs",
    )
    evaluators: list[str] = _opt(
        ["heldout"],
        "what to measure at each epoch end (the first ranks epochs): heldout (the objective's own held-out "
        "metrics: top-1/top-5/loss, or the pre-training loss) and fewshot[:SHOTS] (few-shot linear accuracy of "
        "the frozen features, e.g. fewshot:5,10; default 10 shots per class)",
        nargs="+",
    )
    # machinery
    precision: str = _opt(
        "auto",
        "bf16, fp32, or auto (bf16 on CUDA and on CPUs with native bf16, else fp32)",
        choices=("auto", "bf16", "fp32"),
    )
    grad_checkpointing: bool = _opt(False, "recompute block activations in the backward pass: less memory, more time")
    attention: str = _opt(
        "auto",
        "attention kernel: sdpa (PyTorch's fused), explicit (matmul-softmax-matmul), or auto (the faster on this "
        "machine, measured once and cached; VITKIT_ATTENTION forces one); a run keeps its choice when resumed",
        choices=("auto", *ATTENTION_KERNELS),
    )
    optimizer_kernel: str = _opt(
        "auto",
        "PyTorch's fused or foreach optimiser implementation, or auto (the faster on this machine, measured once "
        "and cached; VITKIT_OPTIMIZER forces one); a run keeps its choice when resumed",
        choices=("auto", "fused", "foreach"),
    )
    device: str = _opt("auto", "cpu, cuda, or auto", choices=("auto", "cpu", "cuda"))
    fsdp: bool = _opt(
        False, "under torchrun: shard weights, gradients and optimiser state over the processes (FSDP2) instead of DDP"
    )
    dist_timeout: float = _opt(
        600.0, "under torchrun: seconds a process waits for the others before it stops with an error"
    )
    seed: int = _opt(0, "seed of initialisation, data order and augmentation")
    deterministic: bool = _opt(False, "use only deterministic kernels (slower)")
    checkpoint_every: int = _opt(500, "write a checkpoint every N optimiser steps (and at each scored epoch's end)")
    init: str | None = _opt(
        None,
        "start from these weights (a run or model folder, weight file, pretrained name such as "
        "vit_base_patch16_224.augreg_in21k, hf-hub:ORG/REPO or google:DIR/FILE); the head is re-made",
    )
    out: str | None = _opt(None, "run folder (default: runs/<date>-<time>-<model>)")
    preset: str = _opt("demo", "the recipe the file and flags start from", choices=PRESETS)

    def __post_init__(self) -> None:
        wrong = type_errors(self)
        if wrong:
            raise ConfigError(f"setting {wrong[0]}")
        self._check_choices()
        self._check_finite()
        self._check_ranges()
        self._check_model_args()
        for spec in self.evaluators:
            try:
                evaluator_spec(spec)
            except ValueError as error:
                raise ConfigError(f"--evaluators: {error}") from error
        self._check_combinations()

    def _check_choices(self) -> None:
        for spec in dataclasses.fields(self):
            choices = spec.metadata.get("choices")
            value = getattr(self, spec.name)
            if choices and value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                flag = "--" + spec.name.replace("_", "-")
                raise ConfigError(f"{flag} {value!r} is not a choice; {hint}choose one of {', '.join(choices)}")

    def _check_combinations(self) -> None:
        if self.fsdp and self.ema:
            raise ConfigError("--ema is not supported with --fsdp yet; drop one of them")
        if self.fsdp and self.fewshot:
            raise ConfigError("--evaluators fewshot is not supported with --fsdp yet; use DDP (no --fsdp)")

    def _check_finite(self) -> None:
        # float("nan") and float("inf") parse from a flag, YAML (.nan) and Python alike; NaN passes no
        # comparison, so the range checks below would give the wrong message or none (an infinite
        # --epochs or --warmup-epochs passes "> 0").
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if any(
                isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])
            ):
                raise ConfigError(f"--{spec.name.replace('_', '-')} must be a finite number, got {value!r}")

    def _check_ranges(self) -> None:
        def need(ok: bool, flag: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"--{flag.replace('_', '-')} {rule}, got {getattr(self, flag)!r}")

        need(self.epochs > 0, "epochs", "must be positive (fractions allowed)")
        need(self.steps is None or self.steps >= 1, "steps", "must be at least 1")
        need(self.min_steps is None or self.min_steps >= 1, "min_steps", "must be at least 1")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(self.accum_steps >= 1, "accum_steps", "must be at least 1")
        need(self.lr > 0, "lr", "must be positive")
        need(0 < self.val_fraction < 1, "val_fraction", "is a fraction between 0 and 1")
        need(self.train_images is None or self.train_images >= 1, "train_images", "must be at least 1")
        need(self.img_size is None or self.img_size >= 1, "img_size", "must be a positive number of pixels")
        need(self.in_chans in (None, 1, 3), "in_chans", "is 1 (gray) or 3 (RGB)")
        need(self.randaugment is None or 0 <= self.randaugment <= 30, "randaugment", "is a magnitude from 0 to 30")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "is in [0, 1)")
        need(self.lr_batch_base is None or self.lr_batch_base >= 1, "lr_batch_base", "must be at least 1")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0 (0 = no decay)")
        need(all(0 <= beta < 1 for beta in self.betas), "betas", "are two decay rates in [0, 1), e.g. 0.9 0.999")
        need(0 <= self.momentum < 1, "momentum", "is in [0, 1), e.g. 0.9")
        need(self.mixup >= 0, "mixup", "must be >= 0 (0 = off)")
        need(self.cutmix >= 0, "cutmix", "must be >= 0 (0 = off)")
        need(0 <= self.ema < 1, "ema", "is a decay in [0, 1) (0 = off)")
        need(self.layer_decay is None or 0 < self.layer_decay <= 1, "layer_decay", "is a factor in (0, 1]")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
        need(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        need(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0 (0: at epoch ends only)")
        need(0 <= self.dropout < 1, "dropout", "is a probability in [0, 1)")
        need(0 <= self.drop_path < 1, "drop_path", "is a probability in [0, 1)")
        need(0 <= self.rotate <= 180, "rotate", "is in degrees, 0 to 180")
        need(0 <= self.translate < 1, "translate", "is a fraction of the size in [0, 1)")
        need(0 <= self.shear < 90, "shear", "is in degrees, 0 to 89")
        need(0 <= self.erase <= 1, "erase", "is a probability in [0, 1]")
        if self.zoom is not None:
            need(0 < self.zoom[0] <= self.zoom[1], "zoom", "is two scale factors 0 < low <= high")
        if self.crop_scale is not None:
            low, high = self.crop_scale
            need(0 < low <= high <= 1, "crop_scale", "is two area fractions 0 < low <= high <= 1")
        need(self.workers >= 0, "workers", "must be >= 0")
        need(self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0 (0 = no shuffling)")
        need(self.dist_timeout > 0, "dist_timeout", "is a positive number of seconds")
        need(self.mask_ratio is None or 0 < self.mask_ratio < 1, "mask_ratio", "is a fraction in (0, 1)")
        need(1 <= self.color_bits <= 8, "color_bits", "is 1 to 8 bits per channel")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads"):
            need(getattr(self, name) is None or getattr(self, name) >= 1, name, "must be at least 1")
        need(0 <= self.ignore_index <= 255, "ignore_index", "is a mask value from 0 to 255")
        need(self.dice >= 0, "dice", "must be >= 0 (0 = off)")
        need(len(self.evaluators) >= 1, "evaluators", "names at least one evaluator (heldout, fewshot)")
        need(self.eval_every is None or self.eval_every >= 1, "eval_every", "is a number of epochs, at least 1")

    def _check_model_args(self) -> None:
        set_elsewhere = {
            "dropout": "--dropout",
            "drop_path": "--drop-path",
            "num_classes": "the data (its classes)",
            "in_chans": "--in-chans",
            "img_size": "--img-size",
        }
        for key in self.model_args:
            if key in set_elsewhere:
                raise ConfigError(f"--model-args {key}=... is set by {set_elsewhere[key]}; use that instead")
        try:
            base = get_config(self.model)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        # The image size is not known yet: check the rest at a size that every stride divides (a
        # ResNet's convolutions take any size).
        sizes = {}
        if not isinstance(base, ResNetV2Config):
            patch = self.model_args.get("patch_size", base.patch_size)
            layers = self.model_args.get("hybrid_layers", base.hybrid_layers)
            fits = isinstance(patch, int) and isinstance(layers, list | tuple)
            sizes["img_size"] = patch * 4 * 2 ** len(layers) if fits else 224
        try:
            base.replace(**sizes, **self.model_args)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"--model-args: {error}") from error

    @property
    def supervised(self) -> bool:
        """Classification (vitkit train), as opposed to self-supervised pre-training."""
        return self.objective == "classify"

    @property
    def fewshot(self) -> bool:
        """Whether an evaluator measures few-shot accuracy (it needs labelled training images)."""
        return any(evaluator_spec(spec)[0] == "fewshot" for spec in self.evaluators)

    def sharded(self, distributed: bool) -> bool:
        """Whether weights are sharded over the processes: --fsdp, under torchrun."""
        return self.fsdp and distributed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def global_batch(self, processes: int = 1) -> int:
        """Images per optimiser step: batch_size × accum_steps × processes."""
        return self.batch_size * self.accum_steps * processes

    def peak_lr(self, processes: int = 1) -> float:
        """``lr``, or with ``lr_batch_base`` the linear scaling rule: lr × global batch / lr_batch_base."""
        return self.lr * self.global_batch(processes) / self.lr_batch_base if self.lr_batch_base else self.lr


#: what ``evaluators`` may name
EVALUATORS = ("heldout", "fewshot")
#: few-shot evaluation's shots per class when ``fewshot`` names none
DEFAULT_FEWSHOT_SHOTS = (10,)


def evaluator_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"fewshot:5,10"`` → ``("fewshot", (5, 10))``; ``"heldout"`` → ``("heldout", ())``."""
    name, _, argument = spec.partition(":")
    if name not in EVALUATORS:
        close = difflib.get_close_matches(name, EVALUATORS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown evaluator {spec!r}; {hint}choose from {', '.join(EVALUATORS)}")
    if name != "fewshot":
        if argument:
            raise ValueError(f"{name} takes no argument, got {spec!r}")
        return name, ()
    try:
        shots = tuple(int(n) for n in argument.split(",")) if argument else DEFAULT_FEWSHOT_SHOTS
    except ValueError:
        raise ValueError(
            f"fewshot takes shots per class as comma-separated numbers, e.g. fewshot:5,10; got {spec!r}"
        ) from None
    if min(shots) < 1:
        raise ValueError(f"shots per class must be at least 1, got {spec!r}")
    return name, shots


class ConfigError(ValueError):
    """A config file or value that cannot be used; the message names it."""


def _check_keys(values: dict[str, Any], source: str) -> None:
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file (a ``[model_args]`` table
    holds model overrides)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            values = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError, ValueError) as error:
        raise ConfigError(f"config file {path} is not valid: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    _check_keys(values, str(path))
    return values


def preset_values(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"unknown preset {name!r}; {hint}choose one of {', '.join(PRESETS)}")
    text = resources.files("vitkit.train.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def _default_preset(*layers: dict[str, Any]) -> str:
    """``seg-demo`` where the data the settings name holds a class per pixel, else ``finetune``
    when the run starts from weights (``init``), else ``hybrid-demo`` for image files (folders,
    CSVs), whose sets are often small, and ``demo`` for the built-in ones."""
    data = next((layer["data"] for layer in layers if layer.get("data")), None)
    task = next((layer["task"] for layer in layers if layer.get("task")), "auto")
    if task == "auto" and data is not None:
        task = detect_task(str(data))
    if task == "segmentation":
        return "seg-demo"
    if any(layer.get("init") for layer in layers):
        return "finetune"
    return "demo" if data is None or data in BUILTIN else "hybrid-demo"


def resolve_config(
    preset: str | None = None, file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Build the run's config: defaults ← preset ← file ← overrides (flags). ``model_args``
    tables are merged key by key rather than replaced, but they shape the model of their layer: a
    layer that names a ``model`` (even the preset's own), or starts from weights (``init``), drops
    the earlier ones, so ``--model Ti/16`` is Ti/16 whatever the preset's table made of it.
    An override of None switches a preset's setting off (e.g. ``crop_scale``). Without a preset
    named anywhere, the data decides it (see :func:`_default_preset`)."""
    file_values = read_config_file(file) if file else {}
    overrides = dict(overrides or {})
    _check_keys(overrides, "flags")
    preset = overrides.get("preset") or file_values.get("preset") or preset or _default_preset(overrides, file_values)
    values: dict[str, Any] = {}
    for layer in (preset_values(preset), file_values, overrides):
        if layer.get("model") or layer.get("init"):
            values["model_args"] = {}
        model_args = {**values.get("model_args", {}), **layer.get("model_args", {})}
        values.update(layer)
        values["model_args"] = model_args
    values["preset"] = preset
    data = values.get("data", TrainConfig.data)
    if data not in BUILTIN and Path(data).expanduser().exists():  # so eval and resume work from anywhere
        values["data"] = str(Path(data).expanduser().resolve())
    return TrainConfig(**values)
