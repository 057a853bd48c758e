"""The training loop: data → model → optimiser steps → checkpoints, metrics and a model folder.

Exact resumption rests on three facts: the data order of epoch ``e`` is a permutation drawn
from (seed, e); each sample's augmentation is drawn from (seed, e, index); and everything else
random (dropout, mixing) comes from the global generator, whose state the checkpoint carries.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import shutil
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.datasets import (
    DataSplits,
    TransformedDataset,
    balanced_subset,
    collate_skipping_broken,
    preprocess_in_memory,
)
from ..data.load import load_data
from ..data.shards import ShardStream
from ..data.transforms import eval_transform, train_transform
from ..fileio import atomic_write, lock_folder
from ..interop.adapt import load_state_into
from ..interop.folder import WEIGHTS_NAME, save_model
from ..interop.sources import open_weights
from ..models import ARCHITECTURE_FIELDS, VisionTransformer, get_config
from . import distributed, report
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .distributed import DistributedFailure, Processes
from .objectives import Evaluation, build_objective, combine
from .optim import build_optimizer, build_scheduler
from .run_folder import SUMMARY_NAME, TRAIN_CONFIG_NAME, default_run_dir


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the run after a checkpoint of its last complete step."""


class _StopSignals:
    """While active, SIGINT and SIGTERM only ask the loop to stop at the next step boundary, where
    it writes a checkpoint that resumes exactly (a step cut in half could not). Single process
    only: under torchrun the processes would not stop at the same step."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._ask)
        return self

    def _ask(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # asked twice: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass
class RunSummary:
    """How a run ended. ``best_epoch`` is by held-out top-1 (classification) or loss
    (pre-training); the top-1/top-5 fields are None for pre-training runs."""

    run_dir: str
    objective: str
    best_top1: float | None
    best_epoch: int
    final_top1: float | None
    final_top5: float | None
    final_metrics: dict[str, float]
    epochs: float
    steps: int
    wall_seconds: float
    train_images_per_second: float
    #: share of the training time spent waiting for the data loader
    data_wait_fraction: float
    skipped_files: int
    device: str
    precision: str


# ------------------------------------------------------------------ machinery
def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: without either, bf16 matmuls are emulated and far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; choose cpu, cuda or auto")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name not in ("bf16", "fp32"):
        raise ConfigError(f"unknown precision {name!r}; choose bf16, fp32 or auto")
    return name


# ------------------------------------------------------------------ data and model
def _image_size(config: TrainConfig, data: DataSplits, stride: int) -> int:
    """The configured size, else the data's native size rounded up to a multiple of the patch."""
    if config.img_size:
        return config.img_size
    if data.image_size is None:
        return 224
    return math.ceil(max(data.image_size) / stride) * stride


def model_name(config: TrainConfig) -> str:
    """What the run's model is called: the architecture, or where its starting weights came from."""
    return f"{config.init} (fine-tuned)" if config.init else config.model


def build_model(config: TrainConfig, *, num_classes: int, in_chans: int) -> VisionTransformer:
    """A fresh model, or with ``config.init`` (any source :func:`vitkit.open_weights` reads: a
    folder, a file, a pretrained name, ``hf-hub:...``) one started from those weights with a new,
    zero-initialised head (the paper's fine-tuning head), whatever the class count."""
    overrides = {**config.model_args, "dropout": config.dropout, "drop_path": config.drop_path}
    architecture = get_config(config.model, num_classes=num_classes, in_chans=in_chans, **overrides)
    if not config.init:
        return VisionTransformer(architecture)
    weights = open_weights(config.init, architecture=architecture)
    # The weights fix the architecture: model_args may only change what the weights do not depend
    # on (regularisation, resampling, dynamic sizes).
    ignored = {k: v for k, v in config.model_args.items() if k in ARCHITECTURE_FIELDS}
    clashing = {k: v for k, v in ignored.items() if getattr(weights.config, k) != v}
    if clashing:
        warnings.warn(f"--init {config.init} fixes the architecture; ignoring model_args {clashing}", stacklevel=2)
    vit_config = weights.config.replace(
        num_classes=num_classes,
        representation_size=None,
        dropout=config.dropout,
        drop_path=config.drop_path,
        **{k: v for k, v in config.model_args.items() if k not in ARCHITECTURE_FIELDS},
    )
    if vit_config.in_chans != in_chans:
        raise ConfigError(
            f"--init {config.init} takes {vit_config.in_chans}-channel images but the data has {in_chans}"
        )
    model = VisionTransformer(vit_config)
    load_state_into(model, weights.state, source=str(config.init))
    model.reset_classifier(num_classes)  # the paper's fine-tuning head: new and zero
    return model


def _ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the training process, which stops at a step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(
    dataset: Dataset,
    *,
    batch_size: int,
    indices: list[int] | None,
    workers: int,
    device: torch.device,
    drop_last: bool = True,
    batches: list[list[int]] | None = None,
):
    """Batches of ``indices`` in order (or of the whole stream), or exactly the given ``batches``."""
    if batches is not None:
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            collate_fn=collate_skipping_broken,
            pin_memory=device.type == "cuda",
            worker_init_fn=_ignore_interrupts,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        shuffle=False,
        drop_last=drop_last and (indices is not None or isinstance(dataset, ShardStream)),
        num_workers=workers,
        collate_fn=collate_skipping_broken,
        pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_interrupts,
        # Its own generator: creating an iterator must not draw from the global one, or a
        # resumed run's dropout would see other numbers than the uninterrupted run's.
        generator=torch.Generator().manual_seed(0),
    )


def epoch_order(size: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def _datasets(config: TrainConfig, data: DataSplits, img_size: int, processes: Processes) -> tuple[Dataset, Dataset]:
    """Training and held-out sets with their transforms. Without random augmentation, in-memory
    data is preprocessed once rather than per sample and epoch; shard streams are split between
    the processes."""
    flip = data.flip_ok if config.flip is None else config.flip
    augmented = config.crop_scale is not None or flip or config.randaugment is not None
    evaluation = eval_transform(img_size, data.in_chans)
    if augmented:
        augment = train_transform(
            img_size,
            data.in_chans,
            crop_scale=tuple(config.crop_scale or (1.0, 1.0)),
            flip=flip,
            randaugment=config.randaugment,
        )
    if isinstance(data.train, ShardStream):
        share = {"rank": processes.rank, "world_size": processes.world_size}
        train_stream = data.train.configured(
            transform=augment if augmented else evaluation,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            **share,
        )
        return train_stream, data.val.configured(transform=evaluation, **share)
    if augmented:
        train_set: Dataset = TransformedDataset(data.train, augment, seed=config.seed)
    else:
        train_set = preprocess_in_memory(data.train, evaluation) or TransformedDataset(data.train, evaluation)
    val_set = preprocess_in_memory(data.val, evaluation) or TransformedDataset(data.val, evaluation)
    return train_set, val_set


# ------------------------------------------------------------------ the run
def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> RunSummary:
    """Train as ``config`` says — a classifier, or with ``config.objective`` "mpp"/"mae" a
    self-supervised encoder; with ``resume`` continue from ``config.out``'s checkpoint.

    Writes into the run folder: ``train_config.json``, ``checkpoint.safetensors`` (every
    ``checkpoint_every`` steps and at each epoch end), ``metrics.jsonl``, ``tensorboard/``,
    and at the end the model folder files (``config.json``, ``model.safetensors``: for
    pre-training the encoder without a classifier), ``summary.json``, ``curves.png``, and
    ``confusion.png`` (classification) or ``reconstructions.png`` (MAE).
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic or deterministic_before)
    processes = distributed.from_environment()
    try:
        with _StopSignals(enabled=not processes.distributed) as stop:
            return _train(config, resume=resume, progress=progress, processes=processes, stop=stop)
    except RuntimeError as error:
        if not processes.distributed or isinstance(error, (TrainingDiverged, TrainingInterrupted, DistributedFailure)):
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DistributedFailure(
            f"rank {processes.rank} of {processes.world_size} stops ({reason}): this process failed, or another "
            "process of the job failed or stopped answering. Look for the first error in the job's log; resume "
            "with --resume RUN_DIR once all processes run again."
        ) from error
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        distributed.stop(processes)


def _shared_run_dir(config: TrainConfig, processes: Processes) -> Path:
    """The run folder; without ``--out`` rank 0's timestamped name, the same for every process."""
    names = [config.out or str(default_run_dir(config))]
    if processes.distributed:
        torch.distributed.broadcast_object_list(names, src=0)
    return Path(names[0])


def _train(
    config: TrainConfig, *, resume: bool, progress: bool, processes: Processes, stop: _StopSignals
) -> RunSummary:
    started = time.perf_counter()
    device = distributed.start(processes, resolve_device(config.device), config.dist_timeout)
    precision = resolve_precision(config.precision, device)
    main = processes.is_main
    progress = progress and main
    torch.manual_seed(config.seed)  # the same initial weights in every process
    run_dir = _shared_run_dir(config, processes)
    config = dataclasses.replace(config, out=str(run_dir))

    supervised = config.objective == "classify"
    data = load_data(
        config.data,
        in_chans=config.in_chans,
        val_fraction=config.val_fraction,
        seed=config.seed,
        labels=supervised,
    )
    if supervised and len(data.class_names) < 2:
        raise ConfigError(
            f"{config.data} has one class ({data.class_names[0]!r}): a classifier needs two or more "
            "(for pre-training on unlabeled images, use vitkit pretrain)"
        )
    num_classes = len(data.class_names)
    if config.train_images:
        data.train = balanced_subset(data.train, config.train_images, num_classes=num_classes, seed=config.seed)
    model = build_model(config, num_classes=num_classes if supervised else 0, in_chans=data.in_chans)
    model.set_grad_checkpointing(config.grad_checkpointing)
    img_size = _image_size(config, data, model.config.stride)
    if model.config.img_size != (img_size, img_size):
        model.set_image_size(img_size)
    objective = build_objective(config, model.to(device), num_classes=num_classes, device=device, precision=precision)
    module = objective.module
    sharded = config.fsdp and processes.distributed
    if sharded and config.ema:
        raise ConfigError("--ema is not supported with --fsdp yet; drop one of them")
    trained = distributed.wrap(module, processes, device, fsdp=sharded)  # what forward and backward run through
    if processes.rank:  # different dropout and masks in every process
        torch.manual_seed(config.seed + 1_000_003 * processes.rank)

    train_set, val_set = _datasets(config, data, img_size, processes)
    streaming = isinstance(train_set, ShardStream)
    if sharded and streaming:  # sharded forwards are collective: every process needs as many batches
        raise ConfigError("--fsdp with shard streams is not supported yet; use DDP (no --fsdp) for shards")
    if streaming:
        readers = processes.world_size * max(config.workers, 1)
        for split, stream, needed in (("train", train_set, readers), ("val", val_set, processes.world_size)):
            if len(stream.shards) < needed:
                raise ConfigError(
                    f"{config.data} has {len(stream.shards)} {split} shard(s) for {needed} readers (processes × "
                    "workers): every reader needs at least one; write smaller shards (vitkit shards --shard-size)"
                )
    elif len(val_set) < processes.world_size:
        raise ConfigError(f"{len(val_set)} held-out image(s) cannot be shared by {processes.world_size} processes")

    global_batch = config.global_batch(processes.world_size)
    # Every process takes the same number of micro-batches per epoch (or DDP would wait forever).
    if streaming:
        micro_per_epoch = train_set.batches_per_epoch(config.batch_size, config.workers)
    else:
        micro_per_epoch = len(train_set) // (config.batch_size * processes.world_size)
    steps_per_epoch = micro_per_epoch // config.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training set has {len(train_set)} images, fewer than one global batch of "
            f"{global_batch} (batch_size × accum_steps × {processes.world_size} processes); "
            "lower batch_size or accum_steps"
        )
    total_steps = config.steps or max(1, round(config.epochs * steps_per_epoch))
    num_epochs = math.ceil(total_steps / steps_per_epoch)

    optimizer = build_optimizer(module, config, processes.world_size)
    scheduler = build_scheduler(optimizer, config, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema else None

    checkpoint_path = run_dir / CHECKPOINT_NAME
    # Everything about progress that a resumed run needs; JSON, stored in the checkpoint.
    state = {
        "epoch": 0,
        "step_in_epoch": 0,
        "images_in_epoch": 0,
        "global_batch": global_batch,
        "step": 0,
        "epoch_loss_sum": 0.0,
        "epoch_loss_count": 0,
        "best_score": -math.inf,
        "best_epoch": 0,
        "images": 0,
        "train_seconds": 0.0,
        "data_wait_seconds": 0.0,
        "skipped": sorted(data.skipped),
    }
    if resume and not checkpoint_path.is_file():  # stopped before its first checkpoint: nothing to keep
        if main:
            warnings.warn(f"{run_dir} has no {CHECKPOINT_NAME} yet: the run starts from the beginning", stacklevel=2)
        resume = False
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    elif resume:
        restore = functools.partial(distributed.restore_sharded, module, optimizer) if sharded else None
        state = load_checkpoint(
            checkpoint_path, model=module, optimizer=optimizer, scheduler=scheduler, ema=ema, restore_states=restore
        )
        # Checkpoints count the epoch's progress in images, so any number of processes can resume.
        state.setdefault("images_in_epoch", state["step_in_epoch"] * global_batch)
        state.setdefault("best_score", state.pop("best_top1", -math.inf))  # checkpoints before objectives
        before = state.get("global_batch", global_batch)
        if before != global_batch:
            # Whole new global batches from here, so every process gets as many micro-batches.
            state["images_in_epoch"] -= state["images_in_epoch"] % global_batch
            if main:
                warnings.warn(
                    f"resuming with a global batch of {global_batch} images ({processes.world_size} process(es)) "
                    f"instead of {before}: the epoch continues at image {state['images_in_epoch']}, but steps "
                    "and the learning-rate schedule now count the new batch; keep batch × processes × "
                    "accumulation steps equal to resume the same run",
                    stacklevel=2,
                )
            state["global_batch"] = global_batch
        if processes.rank:  # the checkpoint holds rank 0's random state
            torch.manual_seed(config.seed + 1_000_003 * processes.rank + state["step"])
        if main:
            report.keep_metrics_until(run_dir, state["epoch"])
    elif checkpoint_path.exists() or (run_dir / WEIGHTS_NAME).exists():
        raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    if processes.distributed:  # every process has checked the folder before rank 0 writes to it
        torch.distributed.barrier()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(run_dir)  # noqa: F841 — held until the run ends: one process per run folder
        atomic_write(run_dir / TRAIN_CONFIG_NAME, lambda tmp: tmp.write_text(config.to_json()))

    from torch.utils.tensorboard import SummaryWriter  # imported here: it takes seconds to import

    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=state["step"] or None) if main else None
    eval_module = ema.module if ema is not None else module

    def checkpoint() -> None:
        # DDP keeps weights and optimiser state identical in every process; FSDP gathers them.
        model_state, optimizer_state = distributed.gathered_states(module, optimizer) if sharded else (None, None)
        if main:
            save_checkpoint(
                checkpoint_path,
                model=module,
                optimizer=optimizer,
                scheduler=scheduler,
                ema=ema,
                progress=state,
                model_state=model_state,
                optimizer_state=optimizer_state,
            )

    def held_out() -> Evaluation:
        # Each process scores every world_size-th image, then the sums are added: every held-out
        # image counts exactly once, with no padding, whatever the number of processes.
        if processes.distributed and not streaming:  # a stream holds its process's share already
            mine = torch.arange(processes.rank, len(val_set), processes.world_size)
            # The same number of batches in every process: sharded forwards are collective.
            count = math.ceil(math.ceil(len(val_set) / processes.world_size) / 256)
            batches = [chunk.tolist() for chunk in mine.tensor_split(count) if len(chunk)]
            loader = _loader(
                val_set, batch_size=256, indices=None, workers=config.workers, device=device, batches=batches
            )
        else:
            loader = _loader(
                val_set, batch_size=256, indices=None, workers=config.workers, device=device, drop_last=False
            )
        return combine(objective.evaluate(eval_module, loader), processes)

    def stop_diverged(value: float) -> None:
        if writer is not None:
            writer.close()
        bar.close()
        kept = checkpoint_path if checkpoint_path.exists() else "none written yet"
        raise TrainingDiverged(
            f"the loss became {value} at step {state['step'] + 1} (epoch {epoch + 1}); stopped. "
            f"The last good checkpoint is kept: {kept}. "
            "Lower the learning rate, raise the warmup, or use --precision fp32."
        )

    if progress:
        params = sum(p.numel() for p in model.parameters())
        doing = ("resuming " if resume else "") + ("training" if supervised else f"pre-training ({config.objective})")
        print(
            f"{doing} {model_name(config)} ({params:,} parameters, {img_size} px, "
            f"{model.config.grid[0] * model.config.grid[1]} patches) on {config.data}: {len(train_set):,} training / "
            f"{len(val_set):,} held-out images, {len(data.class_names)} classes; {device} {precision}; "
            f"run folder {run_dir}",
            flush=True,
        )
    result: Evaluation | None = None
    bar = tqdm(total=total_steps, initial=state["step"], disable=not progress, unit="step", dynamic_ncols=True)
    module.train()
    for epoch in range(state["epoch"], num_epochs):
        if isinstance(train_set, (TransformedDataset, ShardStream)):
            train_set.set_epoch(epoch)
        if streaming:  # each process reads its own shards; a resumed epoch skips what was done
            done = state["images_in_epoch"] // (config.batch_size * processes.world_size)
            stream = _loader(
                train_set, batch_size=config.batch_size, indices=None, workers=config.workers, device=device
            )
            loader = itertools.islice(stream, done, steps_per_epoch * config.accum_steps)
        else:
            order = epoch_order(len(train_set), config.seed, epoch)
            usable = steps_per_epoch * global_batch  # micro-batches that would not complete a step are left out
            mine = distributed.rank_batches(order[state["images_in_epoch"] : usable], config.batch_size, processes)
            loader = _loader(
                train_set, batch_size=config.batch_size, indices=mine, workers=config.workers, device=device
            )
        tick = time.perf_counter()
        step_losses = torch.zeros(2, dtype=torch.float64)  # this step's loss sum and micro-batch count
        batches = iter(loader)
        for micro in itertools.count(1):
            # Time spent waiting for the next batch: how much the data loader starves the model.
            waiting = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            state["data_wait_seconds"] = state.get("data_wait_seconds", 0.0) + time.perf_counter() - waiting
            images, labels, broken = batch
            state["skipped"] = sorted({*state["skipped"], *broken})
            last_micro = micro % config.accum_steps == 0
            if images is not None:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                with distributed.no_gradient_sync(trained, skip=not last_micro):
                    loss = objective.loss(trained, images, labels)
                    value = loss.item()
                    if not math.isfinite(value) and not processes.distributed:
                        stop_diverged(value)
                    (loss / config.accum_steps).backward()
                step_losses += torch.tensor([value, 1.0], dtype=torch.float64)
                state["images"] += len(images) * processes.world_size
            if not last_micro:
                continue
            total, count = distributed.all_reduce_sum(step_losses, processes).tolist()
            value = total / max(count, 1)  # the step's mean loss over every process
            if not math.isfinite(value):  # in every process at once, so none is left waiting
                stop_diverged(value)
            state["epoch_loss_sum"] += total
            state["epoch_loss_count"] += int(count)
            step_losses.zero_()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(module)
            state["step"] += 1
            state["step_in_epoch"] += 1
            state["images_in_epoch"] += global_batch
            lr = scheduler.get_last_lr()[0]
            now = time.perf_counter()
            state["train_seconds"] += now - tick
            tick = now
            images_per_s = state["images"] / max(state["train_seconds"], 1e-9)
            bar.update(1)
            bar.set_postfix(
                epoch=epoch + 1, loss=f"{value:.3f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}", refresh=False
            )
            if writer is not None:
                writer.add_scalar("train/loss", value, state["step"])
                writer.add_scalar("train/lr", lr, state["step"])
            if state["step"] == total_steps:
                break
            if config.checkpoint_every and state["step"] % config.checkpoint_every == 0:
                checkpoint()
                tick = time.perf_counter()  # checkpoint time is not training time
            if stop.signal is not None:
                checkpoint()
                bar.close()
                if writer is not None:
                    writer.close()
                raise TrainingInterrupted(
                    f"stopped by {signal.Signals(stop.signal).name} after step {state['step']}; a checkpoint of it is "
                    f"saved: continue exactly with vitkit train --resume {run_dir}"
                )

        result = held_out()
        state["skipped"] = sorted({*state["skipped"], *(result.skipped or [])})
        if result.score > state["best_score"]:
            state["best_score"], state["best_epoch"] = result.score, epoch + 1
        record = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": state["epoch_loss_sum"] / max(state["epoch_loss_count"], 1),
            **result.metrics,
            "val_images": result.count,
            "lr": scheduler.get_last_lr()[0],
            "images_per_second": state["images"] / max(state["train_seconds"], 1e-9),
            # share of training time spent waiting for data (more --workers if it is large)
            "data_wait_fraction": state.get("data_wait_seconds", 0.0) / max(state["train_seconds"], 1e-9),
        }
        if main:
            report.append_metrics(run_dir, record)
            for key in ("train_loss", *result.metrics):
                writer.add_scalar(f"epoch/{key}", record[key], epoch + 1)
            bar.write(
                f"epoch {epoch + 1}/{num_epochs}: train loss {record['train_loss']:.4f}  "
                + report.describe(result.metrics)
            )
        state.update(epoch=epoch + 1, step_in_epoch=0, images_in_epoch=0, epoch_loss_sum=0.0, epoch_loss_count=0)
        checkpoint()
    bar.close()
    if writer is not None:
        writer.close()
    if result is None:  # resumed a run that had already finished
        result = held_out()

    summary = RunSummary(
        run_dir=str(run_dir),
        objective=config.objective,
        best_top1=state["best_score"] if supervised and math.isfinite(state["best_score"]) else None,
        best_epoch=state["best_epoch"],
        final_top1=result.metrics.get("val_top1"),
        final_top5=result.metrics.get("val_top5"),
        final_metrics=result.metrics,
        epochs=state["step"] / steps_per_epoch,
        steps=state["step"],
        wall_seconds=time.perf_counter() - started,
        train_images_per_second=state["images"] / max(state["train_seconds"], 1e-9),
        data_wait_fraction=state.get("data_wait_seconds", 0.0) / max(state["train_seconds"], 1e-9),
        skipped_files=len(state["skipped"]),
        device=str(device),
        precision=precision,
    )
    if sharded:  # rank 0 gets a plain copy of the trained module to save and draw
        full = distributed.gathered_model_state(module)
        if main:
            plain = build_objective(
                config, VisionTransformer(model.config), num_classes=num_classes, device=device, precision=precision
            )
            plain.module.load_state_dict(full)
            eval_module = plain.module
    if main:
        kept = objective.vit(eval_module.cpu() if device.type != "cpu" else eval_module)
        save_model(run_dir, kept, class_names=data.class_names if supervised else [], model_name=model_name(config))
        report.plot_curves(report.read_metrics(run_dir), run_dir / "curves.png")
        if result.confusion is not None:
            report.plot_confusion(result.confusion, data.class_names, run_dir / "confusion.png")
        if config.objective == "mae":
            report.plot_reconstructions(eval_module, val_set, run_dir / "reconstructions.png")
        text = json.dumps(asdict(summary), indent=2, allow_nan=False)  # strict JSON: other tools read it
        atomic_write(run_dir / SUMMARY_NAME, lambda tmp: tmp.write_text(text))
    return summary


#: what may change when a run is resumed: its length (the schedule stretches to it) and machinery
RESUMABLE_CHANGES = frozenset({"epochs", "steps", "checkpoint_every", "workers", "dist_timeout"})


def resume_run(run_dir: str | Path, *, changes: dict[str, Any] | None = None, progress: bool = True) -> RunSummary:
    """Continue the run in ``run_dir`` exactly where its last checkpoint left it. ``changes`` may
    lengthen it (``epochs``, ``steps``) or change machinery (:data:`RESUMABLE_CHANGES`); any other
    setting is an error, as it would silently make another run than the one resumed."""
    run_dir = Path(run_dir)
    path = run_dir / TRAIN_CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a vitkit run folder (no {TRAIN_CONFIG_NAME}); nothing to resume")
    config = TrainConfig(**json.loads(path.read_text()))
    fixed = sorted(k for k, v in (changes or {}).items() if k not in RESUMABLE_CHANGES and getattr(config, k) != v)
    if fixed:
        flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
        raise ConfigError(
            f"--resume continues {run_dir} as it was set up; {flags} cannot change mid-run. Start a new run from "
            f"its weights instead (vitkit train --init {run_dir} ...); only "
            f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE_CHANGES))} may change on resume"
        )
    config = dataclasses.replace(config, **(changes or {}), out=str(run_dir))
    return train(config, resume=True, progress=progress)
