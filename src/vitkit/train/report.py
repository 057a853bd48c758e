"""What a run leaves for people: metrics.jsonl, TensorBoard scalars and PNG figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import torch
from matplotlib.ticker import MaxNLocator

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


def plot_curves(metrics: list[dict[str, Any]], path: Path) -> None:
    """Training loss, held-out loss and accuracy per epoch."""
    epochs = [m["epoch"] for m in metrics]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train (as optimised: smoothing, mixing)")
    loss_ax.plot(epochs, [m["val_loss"] for m in metrics], "o-", label="held-out")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [100 * m["val_top1"] for m in metrics], "o-", label="top-1")
    acc_ax.plot(epochs, [100 * m["val_top5"] for m in metrics], "o-", label="top-5")
    acc_ax.set(xlabel="epoch", ylabel="held-out accuracy (%)", title="Accuracy")
    acc_ax.legend()
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (true class down, predicted across), counts in the cells."""
    n = len(class_names)
    rates = confusion.float() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(2 + 0.45 * n, 20)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
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
    plt.close(fig)
