"""Transfer, the paper's recipe in miniature: pre-train on a larger pool, fine-tune on a small
labelled set of a different task, and compare with training from scratch.

- Pre-training: supervised, on MNIST's 30,596 training digits 0-4 (the main job's recipe), for the
  ViT and the BiT ResNet of benchmarks/data_scaling.py (32 px).
- Target: digits 5-9, a task the pre-training never saw, with 10, 100 or 1,000 labelled training
  images (class-balanced), scored on MNIST's 4,861 test digits 5-9.
- Each target run trains for the same number of steps (``--steps``): from the pre-trained weights
  with vitkit's default fine-tuning recipe (``vitkit train --init RUN``: the ``finetune`` preset,
  AdamW), with the paper's (SGD with momentum, no weight decay: the ``paper-finetune`` preset at
  this size, at the best learning rate of the paper's sweep, measured first on 100 labels), and
  from scratch (the main job's recipe).

The digits are written once as PNG folders (train/ and val/ per class), so every run reads them
as a user's image folder would be read (decoded once, into a cache that goes with them). Prints
Markdown tables and writes results/transfer.json (with the host).

    python benchmarks/transfer.py [--seeds 0 1] [--labels 10 100 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from data_scaling import IMG_SIZE, MODELS
from PIL import Image

from vitkit.benchmark import save_for_host
from vitkit.data.datasets.builtin import load_mnist
from vitkit.machine import describe_host, host_record
from vitkit.train import resolve_config, train

PRETRAIN_CLASSES, TARGET_CLASSES = range(5), range(5, 10)
TRANSFERRED = ("ViT", "ResNet")
#: the paper's fine-tuning recipe (the paper-finetune preset) at this benchmark's size and batch
PAPER_AT_CPU_SCALE = {"accum_steps": 1, "crop_scale": [0.5, 1.0]}
#: recipes of a target run: (preset, starts from the pre-trained weights, settings over the preset's)
RECIPES = {
    "fine-tuned (finetune preset)": ("finetune", True, {}),
    "fine-tuned (the paper's SGD)": ("paper-finetune", True, PAPER_AT_CPU_SCALE),
    "from scratch (demo recipe)": ("demo", False, {}),
}
LEARNING_RATES = (0.003, 0.01, 0.03, 0.1)  # the paper's fine-tuning sweep (App. B.1.1), and one above
ROOT = Path(__file__).resolve().parent.parent


def write_digit_folders(root: Path) -> None:
    """MNIST as image folders: ``pretrain/train|val/<0-4>`` and ``target/train|val/<5-9>`` (training
    digits under train/, test digits under val/)."""
    splits = load_mnist()
    for part, classes in (("pretrain", PRETRAIN_CLASSES), ("target", TARGET_CLASSES)):
        for split, dataset in (("train", splits.train), ("val", splits.val)):
            for index in range(len(dataset)):
                image, label = dataset[index]
                if int(label) in classes:
                    folder = root / part / split / str(int(label))
                    folder.mkdir(parents=True, exist_ok=True)
                    pixels = image[0].numpy() if hasattr(image, "numpy") else np.asarray(image)
                    Image.fromarray(pixels).save(folder / f"{index}.png")


def quietly_train(overrides: dict, preset: str) -> dict:
    """One run, its epoch lines kept out of the benchmark's output: its final held-out top-1 and time."""
    with tempfile.TemporaryDirectory() as out:
        config = resolve_config(preset=preset, overrides={**overrides, "out": overrides.get("out", out)})
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train(config, progress=False)
    return {"top1": summary.final_top1, "train_seconds": summary.train_seconds, "epochs": summary.epochs}


def pretrain(name: str, data: Path, out: Path, images: int) -> dict:
    model, model_args = MODELS[name]
    steps = images // 128
    overrides = {
        "data": str(data),
        "model": model,
        "model_args": model_args,
        "img_size": IMG_SIZE,
        "in_chans": 1,
        "flip": False,
        "steps": steps,
        "warmup_steps": steps // 20,
        "eval_every": 1_000_000,
        "out": str(out),
    }
    return quietly_train(overrides, "demo")


def target_run(
    name: str, data: Path, labels: int, steps: int, seed: int, preset: str, init: Path | None, **extra
) -> dict:
    model, model_args = MODELS[name]
    overrides = {
        "data": str(data),
        "in_chans": 1,
        "img_size": IMG_SIZE,
        "flip": False,
        "train_images": labels,
        "batch_size": min(128, labels),
        "steps": steps,
        "warmup_steps": steps // 20,
        "eval_every": 1_000_000,
        "seed": seed,
        **extra,
    }
    if init is None:
        overrides.update(model=model, model_args=model_args)
    else:
        overrides["init"] = str(init)
    return quietly_train(overrides, preset)


def top1s(rows: list[dict], name: str, recipe: str, labels: int) -> list[float]:
    """The top-1 of every seed's run of ``name`` with ``recipe`` on ``labels`` labelled images."""
    return [r["top1"] for r in rows if (r["model"], r["recipe"], r["labels"]) == (name, recipe, labels)]


def mean_and_spread(values: list[float]) -> str:
    percents = [100 * v for v in values]
    spread = statistics.stdev(percents) if len(percents) > 1 else 0.0
    return f"{statistics.mean(percents):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--labels", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps of every target run")
    parser.add_argument("--pretrain-images", type=int, default=96_000, help="images the pre-training sees")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    host = host_record()
    print(f"Machine: {describe_host(host)}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        os.environ["VITKIT_HOME"] = str(root / "home")  # the folders' decoded copies go with them
        write_digit_folders(root)
        pretrained = {}
        for name in TRANSFERRED:
            pretrained[name] = root / f"pretrained-{name}"
            result = pretrain(name, root / "pretrain", pretrained[name], args.pretrain_images)
            print(f"{name} pre-trained on digits 0-4: {100 * result['top1']:.2f} % ({result['train_seconds']:.0f} s)")
            rows.append({"model": name, "recipe": "pre-training on digits 0-4", **result})
        sweep = {}
        for name in TRANSFERRED:
            for lr in LEARNING_RATES:
                settings = {**PAPER_AT_CPU_SCALE, "lr": lr}
                run = target_run(
                    name, root / "target", 100, args.steps, 0, "paper-finetune", pretrained[name], **settings
                )
                sweep[(name, lr)] = run["top1"]
                rows.append({"model": name, "recipe": "the paper's SGD, lr sweep", "labels": 100, "lr": lr, **run})
                print(f"{name} paper's SGD at lr {lr:g}, 100 labels: {100 * run['top1']:.2f} %", flush=True)
        for seed in args.seeds:
            for name in TRANSFERRED:
                for labels in args.labels:
                    for recipe, (preset, starts_pretrained, settings) in RECIPES.items():
                        init = pretrained[name] if starts_pretrained else None
                        if preset == "paper-finetune":  # at the best learning rate of the sweep
                            settings = {**settings, "lr": max(LEARNING_RATES, key=lambda lr: sweep[(name, lr)])}
                        result = target_run(name, root / "target", labels, args.steps, seed, preset, init, **settings)
                        rows.append({"model": name, "recipe": recipe, "labels": labels, "seed": seed, **result})
                        print(
                            f"{name} {labels:>5} labels, {recipe}, seed {seed}: {100 * result['top1']:.2f} %",
                            flush=True,
                        )

    print(f"\nMachine: {describe_host(host)}\n")
    print("The paper's fine-tuning recipe (SGD) at each learning rate, 100 labels, seed 0 (top-1 %):\n")
    print("| model | " + " | ".join(f"lr {lr:g}" for lr in LEARNING_RATES) + " |")
    print("|---" * (len(LEARNING_RATES) + 1) + "|")
    for name in TRANSFERRED:
        print(f"| {name} | " + " | ".join(f"{100 * sweep[(name, lr)]:.2f}" for lr in LEARNING_RATES) + " |")
    table = [r for r in rows if "seed" in r]
    print(f"\nDigits 5-9, MNIST test top-1 (%), mean ± sd over seeds {args.seeds}, {args.steps} steps per run:\n")
    print("| model | recipe | " + " | ".join(f"{n:,} labels" for n in args.labels) + " |")
    print("|---|---" + "|---" * len(args.labels) + "|")
    for name in TRANSFERRED:
        for recipe in RECIPES:
            cells = [mean_and_spread(top1s(table, name, recipe, n)) for n in args.labels]
            print(f"| {name} | {recipe} | " + " | ".join(cells) + " |")
    print("\nGain from pre-training (finetune preset − from scratch), percentage points:\n")
    for name in TRANSFERRED:
        gains = [
            statistics.mean(top1s(table, name, "fine-tuned (finetune preset)", n))
            - statistics.mean(top1s(table, name, "from scratch (demo recipe)", n))
            for n in args.labels
        ]
        print(
            f"- {name}: " + ", ".join(f"{n:,} labels {100 * g:+.2f}" for n, g in zip(args.labels, gains, strict=True))
        )
    args.results.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "results"}
    save_for_host(args.results / "transfer.json", host, {"settings": settings, "runs": rows})


if __name__ == "__main__":
    main()
