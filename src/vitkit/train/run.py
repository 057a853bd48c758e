"""A run's parts, set up once before the first step: device and processes, data, model and
objective, optimiser and schedule, evaluators, and the progress (new, or restored from the run
folder's checkpoint)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from ..data.datasets.image_datasets import DataSplits
from ..data.datasets.subsets import balanced_subset
from ..data.load import load_data
from ..data.shards import ShardStream
from ..decisions import (
    Decision,
    decide_attention_for,
    decide_optimizer,
    dtype_of,
    parse_attention_choice,
    tokens_of,
)
from ..device import resolve_device, resolve_precision
from ..fileio import atomic_write, check_out_folder, lock_folder
from ..interop.folder import WEIGHTS_NAME
from ..interop.sources import open_weights
from ..models import ARCHITECTURE_FIELDS, Network, VisionTransformer, ViTConfig, build_network, get_config
from ..seeds import SEEDING, seed_for
from . import distributed, inputs, report
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .distributed import Processes
from .evaluators import Evaluator, build_evaluators, run_evaluators
from .memory import check_activations_fit
from .objectives import DEFAULT_MASK_RATIO, EpochMetrics, Objective, build_objective
from .optim import build_optimizer, build_scheduler
from .progress import Progress
from .run_folder import TRAIN_CONFIG_NAME, default_run_dir

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the model
def model_name(config: TrainConfig, model: Network) -> str:
    """What the run's model is called: where its starting weights came from, its registry name
    if ``model_args`` left that architecture as it is, else "custom ViT" (or "custom ResNet")."""
    if config.init:
        return f"{config.init} (fine-tuned)"
    registry = get_config(config.model)
    if isinstance(model, VisionTransformer):
        fields, custom = ARCHITECTURE_FIELDS - {"in_chans"}, "custom ViT"
    else:
        fields, custom = {"layers", "width_factor", "root_width"}, "custom ResNet"
    if all(getattr(registry, f) == getattr(model.config, f) for f in fields):
        return config.model
    return custom


def build_model(config: TrainConfig, *, num_classes: int, in_chans: int) -> Network:
    """A fresh model, or with ``config.init`` (any source :func:`vitkit.open_weights` reads: a
    folder, a file, a pretrained name, ``hf-hub:...``) one started from those weights with a new,
    zero-initialised head (the paper's fine-tuning head), whatever the class count."""
    overrides = {**config.model_args, "dropout": config.dropout, "drop_path": config.drop_path}
    if config.img_size and not config.init:  # built at the run's size, so that a size error names it
        overrides["img_size"] = config.img_size
    architecture = get_config(config.model, num_classes=num_classes, in_chans=in_chans, **overrides)
    if not config.init:
        return build_network(architecture)
    weights = open_weights(config.init, architecture=architecture)
    if weights.decoder_config is not None:
        logger.warning(f"--init {config.init} is a segmenter: this run starts from its backbone, not its decoder")
    # The weights fix the architecture: model_args may only change what the weights do not depend
    # on (regularisation, resampling, dynamic sizes).
    ignored = {k: v for k, v in config.model_args.items() if k in ARCHITECTURE_FIELDS}
    clashing = {k: v for k, v in ignored.items() if getattr(weights.config, k, None) != v}
    if clashing:
        logger.warning(f"--init {config.init} fixes the architecture; ignoring model_args {clashing}")
    if weights.config.in_chans != in_chans:
        raise ConfigError(
            f"--init {config.init} takes {weights.config.in_chans}-channel images but the data has {in_chans}"
        )
    head = {"representation_size": None} if isinstance(weights.config, ViTConfig) else {}
    model = weights.build_model(
        num_classes=num_classes,
        **head,
        dropout=config.dropout,
        drop_path=config.drop_path,
        **{k: v for k, v in config.model_args.items() if k not in ARCHITECTURE_FIELDS},
    )
    model.reset_classifier(num_classes)  # the paper's fine-tuning head: new and zero
    return model


# ------------------------------------------------------------------ the run
#: about how many epochs of a run are scored when ``eval_every`` is left to vitkit
SCORED_EPOCHS = 20


@dataclass
class Run:
    """Everything a run works with. One name per thing: ``model`` is the network being trained,
    ``objective.module`` what the optimiser updates (the ViT, or the ViT inside a pre-training
    module), ``wrapped`` that module as forward and backward run it (DDP, sharded, or itself),
    and ``ema`` its moving average."""

    config: TrainConfig
    processes: Processes
    device: torch.device
    precision: str
    run_dir: Path
    data: DataSplits
    model: Network
    objective: Objective
    wrapped: nn.Module
    train_set: Dataset
    val_set: Dataset
    evaluators: list[Evaluator]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: AveragedModel | None
    steps_per_epoch: int
    total_steps: int
    progress: Progress
    #: the kernels chosen for this machine (empty where the config named them)
    decisions: list[Decision] = field(default_factory=list)
    #: continues a checkpoint (False for a new run, or a resumed one that had none yet)
    resumed: bool = False
    #: held while the run lives: one process per run folder
    lock: Any = None

    @property
    def main(self) -> bool:
        return self.processes.is_main

    @property
    def sharded(self) -> bool:
        return self.config.sharded(self.processes.distributed)

    @property
    def num_epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def scores(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (from 0) is evaluated: every ``eval_every``-th and the last; by
        default about :data:`SCORED_EPOCHS` times a run (every epoch of a run of fewer than twice as
        many), so that a small set seen for hundreds of short epochs is not scored after each."""
        every = self.config.eval_every or max(1, self.num_epochs // SCORED_EPOCHS)
        return (epoch + 1) % every == 0 or epoch + 1 == self.num_epochs

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    @property
    def scored_module(self) -> nn.Module:
        """What evaluators measure and the run folder keeps: the EMA weights if kept, else the module."""
        return self.ema.module if self.ema is not None else self.objective.module

    def evaluate(self) -> EpochMetrics:
        """This epoch's metrics: every evaluator's, of the scored module."""
        return run_evaluators(self.evaluators, self.scored_module)

    def checkpoint(self) -> None:
        """Save everything needed to continue exactly (rank 0 writes; FSDP gathers first)."""
        module = self.objective.module
        gathered = distributed.gathered_states(module, self.optimizer) if self.sharded else (None, None)
        if self.main:
            save_checkpoint(
                self.checkpoint_path,
                model=module,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                ema=self.ema,
                progress=self.progress.to_dict(),
                model_state=gathered[0],
                optimizer_state=gathered[1],
            )


def _model_at_training_size(
    config: TrainConfig, data: DataSplits, device: torch.device, precision: str
) -> tuple[Network, int]:
    """The run's model at its training resolution (and that resolution), once its activations are
    known to fit the device's memory (a ViT's; a ResNet's are not estimated)."""
    # a segmenter's backbone has no classifier: its decoder classifies each patch
    num_classes = len(data.class_names) if config.supervised and not data.segmentation else 0
    model = build_model(config, num_classes=num_classes, in_chans=data.in_chans)
    model.set_grad_checkpointing(config.grad_checkpointing)
    img_size = inputs.image_size(config, data, model.config.stride)
    if not isinstance(model, VisionTransformer):
        if data.segmentation or not config.supervised:
            task = "segmentation" if data.segmentation else f"{config.objective} pre-training"
            raise ConfigError(f"{task} works on a ViT's patch tokens, and {config.model} is a ResNet: choose a ViT")
        model.set_image_size(img_size)
        return model, img_size
    check_activations_fit(
        model.config,
        img_size=img_size,
        batch=config.batch_size,
        device=device,
        precision=precision,
        grad_checkpointing=config.grad_checkpointing,
        attention=config.attention,
        visible_fraction=_visible_fraction(config),
    )
    if model.config.img_size != (img_size, img_size):
        model.set_image_size(img_size)
    return model, img_size


def set_up_run(config: TrainConfig, *, resume: bool, processes: Processes, force: bool = False) -> Run:
    """Every part of the run, ready for its first (or next) step. With ``resume`` the
    checkpoint in ``config.out`` is restored; the run folder is created and locked (a folder
    holding files vitkit did not write is refused unless ``force``)."""
    device = distributed.start(processes, resolve_device(config.device), config.dist_timeout)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)  # the same initial weights in every process
    config = dataclasses.replace(config, out=str(_shared_run_dir(config, processes)))
    if not resume:  # before the data is read and the model built
        check_out_folder(Path(config.out), own=TRAIN_CONFIG_NAME, force=force)
    data = _training_data(config)
    if config.supervised and (data.multi_label or data.segmentation) and processes.distributed:
        kind, needs = ("multi-label", "mAP") if data.multi_label else ("segmentation", "mIoU")
        raise ConfigError(
            f"{kind} runs train in one process for now ({needs} needs every held-out score in one place); "
            "start vitkit train without torchrun"
        )
    model, img_size = _model_at_training_size(config, data, device, precision)
    data = inputs.decode_once(config, data, img_size, processes)
    objective = build_objective(
        config,
        model.to(device),
        num_classes=len(data.class_names),
        device=device,
        precision=precision,
        multi_label=data.multi_label,
        segmentation=data.segmentation,
    )
    sharded = config.sharded(processes.distributed)
    wrapped = distributed.wrap(objective.module, processes, device, fsdp=sharded)
    if processes.rank:  # different dropout and masks in every process
        torch.manual_seed(seed_for(config.seed, processes.rank))

    train_set, val_set = inputs.run_datasets(config, data, img_size, processes)
    if sharded and isinstance(train_set, ShardStream):  # sharded forwards are collective
        raise ConfigError("--fsdp with shard streams is not supported yet; use DDP (no --fsdp) for shards")
    inputs.check_shares(config, processes, train_set, val_set)
    steps_per_epoch = inputs.steps_per_epoch(config, processes, train_set)
    total_steps = config.steps or max(config.min_steps or 1, round(config.epochs * steps_per_epoch))
    config, decisions = _decide_kernels(config, model, objective.module, img_size, device, precision, processes)
    optimizer = build_optimizer(objective.module, config, processes.world_size)
    scheduler = build_scheduler(optimizer, config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    ema = None
    if config.ema:
        ema = AveragedModel(objective.module, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
    evaluators = build_evaluators(
        config,
        objective=objective,
        data=data,
        val_set=val_set,
        img_size=img_size,
        processes=processes,
        device=device,
        precision=precision,
    )
    run = Run(
        config=config,
        processes=processes,
        device=device,
        precision=precision,
        run_dir=Path(config.out),
        data=data,
        model=model,
        objective=objective,
        wrapped=wrapped,
        train_set=train_set,
        val_set=val_set,
        evaluators=evaluators,
        optimizer=optimizer,
        scheduler=scheduler,
        ema=ema,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        progress=Progress(config.global_batch(processes.world_size), skipped=sorted(data.skipped)),
        decisions=decisions,
    )
    _start_or_restore(run, resume)
    return run


def _decide_kernels(
    config: TrainConfig,
    model: Network,
    trained: nn.Module,
    img_size: int,
    device: torch.device,
    precision: str,
    processes: Processes,
) -> tuple[TrainConfig, list[Decision]]:
    """``config`` with ``attention`` (a ViT's) and ``optimizer_kernel`` "auto" made the faster on
    this machine (rank 0's measurement, the same in every process), set on ``model``. The run folder
    saves the choices, so a resumed run keeps them."""
    decisions: list[Decision] = []
    attends = isinstance(model, VisionTransformer)
    if processes.is_main:
        if config.attention == "auto" and attends:
            tokens = tokens_of(model.config, img_size, _visible_fraction(config))
            dtype = dtype_of(precision)
            decisions.append(
                decide_attention_for(
                    model, batch=config.batch_size, img_size=img_size, dtype=dtype, training=True, tokens=tokens
                )
            )
        if config.optimizer_kernel == "auto":
            decisions.append(decide_optimizer(trained.parameters(), config.optimizer, device))
    shared = [decisions]
    if processes.distributed:
        torch.distributed.broadcast_object_list(shared, src=0)
    decisions = shared[0]
    names = {"attention": "attention", "optimizer": "optimizer_kernel"}
    config = dataclasses.replace(config, **{names[d.what]: d.choice for d in decisions})
    if attends:
        model.set_attention_kernel(*parse_attention_choice(config.attention))
    return config, decisions


def _visible_fraction(config: TrainConfig) -> float:
    """The share of patch tokens the encoder sees: a masked autoencoder's 1 - mask ratio, else all."""
    return 1 - (config.mask_ratio or DEFAULT_MASK_RATIO["mae"]) if config.objective == "mae" else 1.0


def _shared_run_dir(config: TrainConfig, processes: Processes) -> Path:
    """The run folder; without ``--out`` rank 0's timestamped name, the same for every process."""
    names = [config.out or str(default_run_dir(config))]
    if processes.distributed:
        torch.distributed.broadcast_object_list(names, src=0)
    return Path(names[0])


def _training_data(config: TrainConfig) -> DataSplits:
    """The run's data; labels are read for a classifier and for few-shot evaluation."""
    fewshot = config.fewshot
    data = load_data(
        config.data,
        in_chans=config.in_chans,
        val_fraction=config.val_fraction,
        seed=config.seed,
        labels=config.supervised or fewshot,
        multi_label=config.multi_label,
        task=config.task,
        ignore_index=config.ignore_index,
    )
    if data.segmentation:
        _check_segmentation_settings(config)
    if config.multi_label and not data.multi_label:
        raise ConfigError(f"--multi-label reads the labels of a CSV as label sets; {config.data} is not a CSV")
    if data.multi_label and (fewshot or config.train_images):
        flag = "--evaluators fewshot" if fewshot else "--train-images"
        raise ConfigError(
            f"{flag} draws images class by class, which needs one class per image; {config.data} is multi-label"
        )
    if config.supervised and len(data.class_names) < 2:
        raise ConfigError(
            f"{config.data} has one class ({data.class_names[0]!r}): a classifier needs two or more "
            "(for pre-training on unlabeled images, use vitkit pretrain)"
        )
    if fewshot and len(data.class_names) < 2:
        raise ConfigError(f"{config.data} has one class: few-shot evaluation needs labelled images of two or more")
    if config.train_images:
        classes = len(data.class_names)
        data.train = balanced_subset(data.train, config.train_images, num_classes=classes, seed=config.seed)
    return data


def _check_segmentation_settings(config: TrainConfig) -> None:
    """Refuse the settings that only have a meaning for a class per image."""
    per_image = {
        "mixup": "mixes whole images and their labels",
        "cutmix": "pastes boxes and mixes labels by area",
        "label_smoothing": "smooths one label per image",
        "erase": "blacks out pixels whose class the mask still names",
        "train_images": "draws images class by class",
    }
    for name, why in per_image.items():
        if getattr(config, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {why}: it is for classification, not for {config.data} (a segmentation set)")
    if config.fewshot:
        raise ConfigError(f"--evaluators fewshot needs one class per image; {config.data} is a segmentation set")
    if config.batch_augment is False:
        raise ConfigError("segmentation augments whole batches (each image with its mask); drop --no-batch-augment")


def _start_or_restore(run: Run, resume: bool) -> None:
    """Restore the checkpoint (``resume``) or check the folder holds no other run; then take the
    folder and write the run's settings into it."""
    if resume and not run.checkpoint_path.is_file():  # stopped before its first checkpoint: nothing to keep
        if run.main:
            logger.warning(f"{run.run_dir} has no {CHECKPOINT_NAME} yet: the run starts from the beginning")
        shutil.rmtree(run.run_dir / "tensorboard", ignore_errors=True)
    elif resume:
        _restore(run)
    elif run.checkpoint_path.exists() or (run.run_dir / WEIGHTS_NAME).exists():
        raise ConfigError(
            f"{run.run_dir} already holds a run; continue it with --resume {run.run_dir} or choose another --out"
        )
    if run.processes.distributed:  # every process has checked the folder before rank 0 writes to it
        torch.distributed.barrier()
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.lock = lock_folder(run.run_dir)
        atomic_write(run.run_dir / TRAIN_CONFIG_NAME, lambda tmp: tmp.write_text(run.config.to_json()))


def _restore(run: Run) -> None:
    module = run.objective.module
    restore = functools.partial(distributed.restore_sharded, module, run.optimizer) if run.sharded else None
    saved = load_checkpoint(
        run.checkpoint_path,
        model=module,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        ema=run.ema,
        restore_states=restore,
    )
    global_batch = run.progress.global_batch
    run.progress = Progress.from_dict(saved, global_batch=global_batch)
    before = run.progress.global_batch
    if run.progress.rebatch(global_batch) and run.main:
        logger.warning(
            f"resuming with a global batch of {global_batch} images ({run.processes.world_size} process(es)) "
            f"instead of {before}: the epoch continues at image {run.progress.images_in_epoch}, but steps "
            "and the learning-rate schedule now count the new batch; keep batch × processes × "
            "accumulation steps equal to resume the same run"
        )
    if run.processes.rank:  # the checkpoint holds rank 0's random state
        seed, rank, step = run.config.seed, run.processes.rank, run.progress.step
        torch.manual_seed(
            seed_for(seed, rank, step) if run.progress.seeding == SEEDING else seed + 1_000_003 * rank + step
        )
    if run.main:
        report.keep_metrics_until(run.run_dir, run.progress.epoch)
    run.resumed = True
