"""What a run leaves for people: metrics.jsonl, TensorBoard scalars and PNG figures."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure  # not pyplot: no backend to choose, nothing global to close
from matplotlib.ticker import MaxNLocator
from torch.utils.data import Dataset
from tqdm import tqdm

from ..data.masks import mask_overlay
from ..data.transforms import MEAN, STD
from .segmentation import SegmentationScores

METRICS_NAME = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keep_metrics_until(run_dir: Path, epoch: int) -> None:
    """On resume, drop epoch records written after the checkpoint we continue from."""
    kept = [m for m in read_metrics(run_dir) if m["epoch"] <= epoch]
    (run_dir / METRICS_NAME).write_text("".join(json.dumps(m) + "\n" for m in kept))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with (run_dir / METRICS_NAME).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


#: held-out metrics shown as percentages, and their names for people
PERCENT_METRICS = {
    "val_top1": "top-1",
    "val_top5": "top-5",
    "val_color_accuracy": "colour accuracy",
    "val_mAP": "mAP",
    "val_f1": "micro-F1",
    "val_mIoU": "mIoU",
    "val_pixel_accuracy": "pixel accuracy",
    "val_mean_accuracy": "mean class accuracy",
}


def percent_metrics(metrics: dict[str, Any]) -> dict[str, str]:
    """The accuracies among ``metrics`` and their names for people (few-shot ones included:
    ``fewshot_10shot`` → "10-shot")."""
    shown = {key: label for key, label in PERCENT_METRICS.items() if key in metrics}
    for key in metrics:
        if key.startswith("fewshot_") and key.endswith("shot"):
            shown[key] = key.removeprefix("fewshot_").removesuffix("shot") + "-shot"
    return shown


def describe(metrics: dict[str, float]) -> str:
    """One line for the log, e.g. ``held-out loss 0.1234  top-1 98.10%  top-5 99.90%  10-shot 91.20%``."""
    parts = [f"held-out loss {metrics['val_loss']:.4f}"] if "val_loss" in metrics else []
    parts += [f"{label} {100 * metrics[key]:.2f}%" for key, label in percent_metrics(metrics).items()]
    return "  ".join(parts)


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    """Training and held-out loss per epoch, and the held-out accuracies the run has (at the
    epochs it scored: see ``eval_every``)."""
    epochs = [m["epoch"] for m in metrics]
    scored = [m for m in metrics if "val_images" in m]
    shown = percent_metrics(scored[0]) if scored else {}
    fig = Figure(figsize=(10 if shown else 5.5, 4))
    axes = fig.subplots(1, 2 if shown else 1, squeeze=False)
    loss_ax = axes[0, 0]
    loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train (as optimised)")
    if scored and "val_loss" in scored[0]:
        loss_ax.plot([m["epoch"] for m in scored], [m["val_loss"] for m in scored], "o-", label="held-out")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend()
    if shown:
        acc_ax = axes[0, 1]
        for key, label in shown.items():
            acc_ax.plot([m["epoch"] for m in scored], [100 * m[key] for m in scored], "o-", label=label)
        acc_ax.set(xlabel="epoch", ylabel="held-out score (%)", title="Held-out scores")
        acc_ax.legend()
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


class RunLog:
    """Where a run reports as it goes: a progress bar, TensorBoard scalars and ``metrics.jsonl``
    (rank 0 only; other processes get a silent log). Closes both on exit, however the run ends."""

    def __init__(self, run_dir: Path, *, main: bool, bar: bool, total_steps: int, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # heavy (seconds): only once a run starts

        self.run_dir = run_dir
        self.main = main
        self.bar = tqdm(total=total_steps, initial=step, disable=not bar, unit="step", dynamic_ncols=True)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None) if main else None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()

    def step(
        self, step: int, *, epoch: int, loss: float, grad_norm: float, lr: float, images_per_second: float
    ) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            epoch=epoch + 1,
            loss=f"{loss:.3f}",
            grad_norm=f"{grad_norm:.2f}",
            lr=f"{lr:.2e}",
            img_s=f"{images_per_second:.0f}",
            refresh=False,
        )
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/grad_norm", grad_norm, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, record: dict[str, Any], metrics: dict[str, float], num_epochs: int) -> None:
        """Append the epoch's ``record`` (it holds ``train_loss`` and the held-out ``metrics``); an
        epoch that was scored is also printed (the bar shows the others' loss as they run)."""
        if not self.main:
            return
        append_metrics(self.run_dir, record)
        for key in ("train_loss", *metrics):
            self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        if metrics:
            self.bar.write(
                f"epoch {record['epoch']}/{num_epochs}: train loss {record['train_loss']:.4f}  " + describe(metrics)
            )


@torch.no_grad()
def plot_reconstructions(autoencoder: Any, dataset: Any, path: Path, count: int = 8) -> None:
    """MAE at work on the first ``count`` held-out images: the visible patches, the
    reconstruction (visible patches pasted back), the original."""
    readable = (image for image, _ in dataset if image is not None)  # map-style or stream
    images = torch.stack(list(itertools.islice(readable, count)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        was_training = autoencoder.training
        masked, pasted = autoencoder.eval().reconstruct(images.to(next(autoencoder.parameters()).device))
        autoencoder.train(was_training)
    rows = [("encoder input", masked.cpu()), ("reconstruction", pasted.cpu()), ("original", images)]
    fig = Figure(figsize=(1.3 * len(images), 4.2))
    axes = fig.subplots(3, len(images), squeeze=False)
    for row, (title, batch) in enumerate(rows):
        for col, image in enumerate(batch):
            pixels = (image.float() * STD + MEAN).clamp(0, 1).permute(1, 2, 0).numpy()
            axes[row, col].imshow(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("Masked autoencoder on held-out images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (true class down, predicted across), counts in the cells."""
    n = len(class_names)
    rates = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(2 + 0.45 * n, 20)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    labels = class_names if n <= 40 else []
    ax.set_xticks(range(len(labels)), labels, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(len(labels)), labels)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                count = int(confusion[i, j])
                if count:
                    color = "white" if rates[i, j] > 0.5 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (held-out)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_class_iou(
    scores: SegmentationScores, class_names: list[str], colours: list[tuple[int, int, int]], path: Path
) -> None:
    """Held-out IoU per class, a bar in each class's colour (classes absent from both the truth
    and the predictions are marked so, and left out of the mean)."""
    ious = scores.per_class_iou
    fig = Figure(figsize=(7, 1.2 + 0.3 * len(class_names)))
    ax = fig.subplots()
    rows = range(len(class_names))
    values = [0.0 if np.isnan(iou) else 100 * iou for iou in ious]
    ax.barh(rows, values, color=[np.asarray(c) / 255 for c in colours], edgecolor="black", linewidth=0.5)
    for row, iou in zip(rows, ious, strict=True):
        ax.text(
            1 if np.isnan(iou) else 100 * iou + 1,
            row,
            "absent" if np.isnan(iou) else f"{100 * iou:.1f}",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(list(rows), class_names)
    ax.invert_yaxis()
    ax.set(xlim=(0, 105), xlabel="IoU (%)", title=f"Held-out IoU per class (mIoU {100 * scores.mean_iou:.1f} %)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@torch.no_grad()
def plot_segmentations(
    segmenter: torch.nn.Module, dataset: Dataset, colours: list[tuple[int, int, int]], path: Path, count: int = 8
) -> None:
    """The segmenter on the first ``count`` held-out images: the image, the true mask over it,
    and the predicted mask over it."""
    images = torch.stack([dataset[index][0] for index in range(min(count, len(dataset)))])
    truths = torch.stack([torch.as_tensor(dataset[index][1]) for index in range(len(images))])
    was_training = segmenter.training
    predicted = segmenter.eval()(images.to(next(segmenter.parameters()).device)).argmax(1).cpu()
    segmenter.train(was_training)
    fig = Figure(figsize=(1.4 * len(images), 4.4))
    axes = fig.subplots(3, len(images), squeeze=False)
    for col, image in enumerate(images):
        pixels = ((image.float() * STD + MEAN).clamp(0, 1) * 255).round().to(torch.uint8)
        rgb = pixels.expand(3, -1, -1) if len(pixels) == 1 else pixels
        rgb = rgb.permute(1, 2, 0).numpy()
        shown = [
            rgb,
            mask_overlay(rgb, truths[col].numpy(), colours, 0.7),
            mask_overlay(rgb, predicted[col].numpy(), colours, 0.7),
        ]
        for row, picture in enumerate(shown):
            axes[row, col].imshow(picture)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    for row, title in enumerate(("image", "truth", "predicted")):
        axes[row, 0].set_ylabel(title, fontsize=8)
    fig.suptitle("Segmenter on held-out images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
