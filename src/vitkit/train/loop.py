"""The training loop: a run's epochs of optimiser steps, each epoch ending with a metrics record
(and, when scored, its evaluators and a checkpoint), and the run ending with a model folder.

The parts live in their own modules: :mod:`.run` sets a run up (data, model, objective,
optimiser, schedule, resume), :mod:`.step` is one optimiser step, :mod:`.evaluators` measure,
:mod:`.inputs` feeds batches, :mod:`.progress` counts, :mod:`.report` logs and draws.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import cores
from ..decisions import Decision
from ..fileio import atomic_write
from ..interop.folder import save_model
from ..models import VisionTransformer, build_network
from . import distributed, inputs, report
from .advice import small_data_advice
from .config import ConfigError, TrainConfig
from .distributed import DistributedFailure, Processes
from .objectives import THRESHOLD, EpochMetrics, build_objective
from .run import Run, model_name, set_up_run
from .run_folder import SUMMARY_NAME, TRAIN_CONFIG_NAME
from .segmentation import SegmentationScores
from .step import train_step


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
    """How a run ended. ``best_epoch`` is the best by ``ranked_by``, the first evaluator's
    metric (held-out top-1 for a classifier, loss for pre-training by default); ``best_top1`` is
    set when that metric is top-1. The top-1/top-5 fields are None for pre-training runs."""

    run_dir: str
    objective: str
    #: the trained architecture in words (depth, width, heads, patches, tokens)
    architecture: str
    best_top1: float | None
    best_epoch: int
    ranked_by: str
    final_top1: float | None
    final_top5: float | None
    final_metrics: dict[str, float]
    epochs: float
    steps: int
    wall_seconds: float
    #: time spent in training steps (no data loading before the run, no evaluation, no saving)
    train_seconds: float
    train_images_per_second: float
    #: share of the training time spent waiting for the data loader
    data_wait_fraction: float
    skipped_files: int
    device: str
    precision: str


# ------------------------------------------------------------------ the run
def train(config: TrainConfig, *, resume: bool = False, progress: bool = True, force: bool = False) -> RunSummary:
    """Train as ``config`` says — a classifier, or with ``config.objective`` "mpp"/"mae" a
    self-supervised encoder; with ``resume`` continue from ``config.out``'s checkpoint. A
    ``config.out`` holding files vitkit did not write is refused unless ``force``.

    Writes into the run folder: ``train_config.json``, ``checkpoint.safetensors`` (every
    ``checkpoint_every`` steps and at each scored epoch's end), ``metrics.jsonl``, ``tensorboard/``,
    and at the end the model folder files (``config.json``, ``model.safetensors``: for
    pre-training the encoder without a classifier), ``summary.json``, ``curves.png``, and
    ``confusion.png`` (classification), ``class_iou.png`` and ``segmentations.png``
    (segmentation) or ``reconstructions.png`` (MAE).
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic or deterministic_before)
    processes = distributed.from_environment()
    try:
        with _StopSignals(enabled=not processes.distributed) as stop:
            return _train(config, resume=resume, progress=progress, processes=processes, stop=stop, force=force)
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


def _train(
    config: TrainConfig, *, resume: bool, progress: bool, processes: Processes, stop: _StopSignals, force: bool
) -> RunSummary:
    started = time.perf_counter()
    run = set_up_run(config, resume=resume, processes=processes, force=force)
    show = progress and run.main
    if show:
        print(_banner(run), flush=True)
        advice = small_data_advice(run.model, train_images=len(run.train_set), starts_from_weights=bool(config.init))
        if advice and config.supervised and not run.data.segmentation:
            print(advice, flush=True)
    result: EpochMetrics | None = None
    log = report.RunLog(run.run_dir, main=run.main, bar=show, total_steps=run.total_steps, step=run.progress.step)
    with log:
        run.objective.module.train()
        for epoch in range(run.progress.epoch, run.num_epochs):
            _train_epoch(run, epoch, log, stop)
            result = _end_epoch(run, log, run.scores(epoch))
    if result is None:  # resumed a run that had already finished
        result = run.evaluate()
    return _finish(run, result, time.perf_counter() - started)


def _banner(run: Run) -> str:
    config, model = run.config, run.model
    params = sum(p.numel() for p in run.objective.module.parameters())
    if run.data.segmentation:
        task = f"training a segmenter ({config.decoder} decoder) on"
    else:
        task = "training" if config.supervised else f"pre-training ({config.objective})"
    doing = ("resuming " if run.resumed else "") + task
    attention = f"{config.attention} attention, " if isinstance(model, VisionTransformer) else ""
    return (
        f"{doing} {model_name(config, model)}: {model.config.describe()}, {params:,} parameters; "
        f"{config.data}: {len(run.train_set):,} training / {len(run.val_set):,} held-out images, "
        f"{len(run.data.class_names)} classes; recipe {config.preset} ({config.optimizer} at lr {config.lr:g}); "
        f"{run.device} {run.precision}, {attention}{config.optimizer_kernel} {config.optimizer}{_how(run.decisions)}; "
        f"run folder {run.run_dir}"
    )


def _how(decisions: list[Decision]) -> str:
    """How the kernels were chosen: "(attention measured, optimizer cached)"."""
    return f" ({', '.join(f'{d.what} {d.how}' for d in decisions)})" if decisions else ""


def _train_epoch(run: Run, epoch: int, log: report.RunLog, stop: _StopSignals) -> None:
    """Optimiser steps until the epoch's data or the run's steps run out, with checkpoints every
    ``checkpoint_every`` steps and at a stop signal."""
    config, progress = run.config, run.progress
    batches = iter(
        inputs.epoch_batches(
            config,
            run.train_set,
            epoch=epoch,
            images_done=progress.images_in_epoch,
            seeding=progress.seeding,
            steps=run.steps_per_epoch,
            processes=run.processes,
            device=run.device,
        )
    )
    tick = time.perf_counter()
    while (micro_batches := _next_micro_batches(run, batches)) is not None:
        if not config.deterministic:  # a deterministic run keeps its thread count
            cores.rebalance()
        result = train_step(
            run.objective,
            run.wrapped,
            run.optimizer,
            run.scheduler,
            run.ema,
            micro_batches,
            grad_clip=config.grad_clip,
            processes=run.processes,
        )
        if not result.finite:
            kept = run.checkpoint_path if run.checkpoint_path.exists() else "none written yet"
            raise TrainingDiverged(
                f"the loss became {result.loss} at step {progress.step + 1} (epoch {epoch + 1}); stopped. "
                f"The last good checkpoint is kept: {kept}. "
                "Lower the learning rate, raise the warmup, or use --precision fp32."
            )
        progress.finish_step(result.loss_sum, result.count)
        now = time.perf_counter()
        progress.train_seconds += now - tick
        tick = now
        lr = run.scheduler.get_last_lr()[0]
        log.step(
            progress.step,
            epoch=epoch,
            loss=result.loss,
            grad_norm=result.grad_norm,
            lr=lr,
            images_per_second=progress.images_per_second,
        )
        if progress.step == run.total_steps:
            return
        if config.checkpoint_every and progress.step % config.checkpoint_every == 0:
            run.checkpoint()
            tick = time.perf_counter()  # checkpoint time is not training time
        if stop.signal is not None:
            run.checkpoint()
            raise TrainingInterrupted(
                f"stopped by {signal.Signals(stop.signal).name} after step {progress.step}; a checkpoint of it is "
                f"saved: continue exactly with vitkit train --resume {run.run_dir}"
            )


def _next_micro_batches(run: Run, batches: Iterator) -> list[tuple[Tensor, Tensor]] | None:
    """The next step's micro-batches on the device (unreadable images left out), or None at the
    epoch's end. Time spent waiting for them is counted: how much the loader starves the model."""
    micro_batches = []
    for _ in range(run.config.accum_steps):
        waiting = time.perf_counter()
        batch = next(batches, None)
        run.progress.data_wait_seconds += time.perf_counter() - waiting
        if batch is None:
            return None
        images, labels, broken = batch
        run.progress.add_skipped(broken)
        if images is not None:
            micro_batches.append((images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)))
            run.progress.images += len(images) * run.processes.world_size
    return micro_batches


def _end_epoch(run: Run, log: report.RunLog, scored: bool) -> EpochMetrics | None:
    """Evaluate (if ``scored``: see ``eval_every``), record the epoch, and checkpoint a scored one."""
    progress = run.progress
    result = run.evaluate() if scored else None
    held_out = {}
    if result is not None:
        progress.add_skipped(result.skipped)
        held_out = {**result.metrics, "val_images": result.count}
    record = {
        "epoch": progress.epoch + 1,
        "step": progress.step,
        "train_loss": progress.epoch_loss,
        **held_out,
        "lr": run.scheduler.get_last_lr()[0],
        "images_per_second": progress.images_per_second,
        # share of training time spent waiting for data (more --workers if it is large)
        "data_wait_fraction": progress.data_wait_fraction,
    }
    progress.finish_epoch(None if result is None else result.score)
    log.epoch(record, {} if result is None else result.metrics, run.num_epochs)
    if scored:  # and every checkpoint_every steps: hundreds of one-step epochs are not each saved
        run.checkpoint()
    return result


def _finish(run: Run, result: EpochMetrics, wall_seconds: float) -> RunSummary:
    """The summary; rank 0 writes the model folder, the figures and ``summary.json``."""
    progress = run.progress
    summary = RunSummary(
        run_dir=str(run.run_dir),
        objective=run.config.objective,
        architecture=run.model.config.describe(),
        best_top1=progress.best_score if result.score_key == "val_top1" and progress.best_epoch else None,
        best_epoch=progress.best_epoch,
        ranked_by=result.score_key,
        final_top1=result.metrics.get("val_top1"),
        final_top5=result.metrics.get("val_top5"),
        final_metrics=result.metrics,
        epochs=progress.step / run.steps_per_epoch,
        steps=progress.step,
        wall_seconds=wall_seconds,
        train_seconds=progress.train_seconds,
        train_images_per_second=progress.images_per_second,
        data_wait_fraction=progress.data_wait_fraction,
        skipped_files=len(progress.skipped),
        device=str(run.device),
        precision=run.precision,
    )
    kept = _kept_module(run)
    if run.main:
        saved = run.objective.saved_model(kept.cpu() if run.device.type != "cpu" else kept)
        class_names = run.data.class_names if run.config.supervised else []
        save_model(
            run.run_dir,
            saved,
            class_names=class_names,
            model_name=model_name(run.config, run.model),
            threshold=result.metrics.get(THRESHOLD),
            colours=run.data.colours,
        )
        report.plot_curves(report.read_metrics(run.run_dir), run.run_dir / "curves.png")
        if run.data.segmentation and result.confusion is not None:
            scores = SegmentationScores.of_confusion(result.confusion)
            report.plot_class_iou(scores, run.data.class_names, run.data.colours, run.run_dir / "class_iou.png")
            report.plot_segmentations(saved, run.val_set, run.data.colours, run.run_dir / "segmentations.png")
        elif result.confusion is not None:
            report.plot_confusion(result.confusion, run.data.class_names, run.run_dir / "confusion.png")
        if run.config.objective == "mae":
            report.plot_reconstructions(kept, run.val_set, run.run_dir / "reconstructions.png")
        text = json.dumps(asdict(summary), indent=2, allow_nan=False)  # strict JSON: other tools read it
        atomic_write(run.run_dir / SUMMARY_NAME, lambda tmp: tmp.write_text(text))
    return summary


def _kept_module(run: Run) -> torch.nn.Module:
    """The module the run folder keeps; for a sharded run rank 0 gets a plain, gathered copy."""
    if not run.sharded:
        return run.scored_module
    full = distributed.gathered_model_state(run.objective.module)
    if not run.main:
        return run.scored_module
    plain = build_objective(
        run.config,
        build_network(run.model.config),
        num_classes=len(run.data.class_names),
        device=run.device,
        precision=run.precision,
        multi_label=run.data.multi_label,
        segmentation=run.data.segmentation,
    )
    plain.module.load_state_dict(full)
    return plain.module


#: what may change when a run is resumed: its length (the schedule stretches to it) and machinery
RESUMABLE_CHANGES = frozenset(
    {"epochs", "steps", "min_steps", "checkpoint_every", "eval_every", "workers", "dist_timeout"}
)


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
