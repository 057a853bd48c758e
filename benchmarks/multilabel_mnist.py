"""Multi-label classification on MNIST collages: each 56×56 image is a 2×2 grid of 28 px cells
holding 2–4 distinct MNIST digits (the other cells black), labelled by the digits present.

Training collages are made of MNIST training digits and written as PNGs with a ``path,"3;7"``
CSV; ``vitkit train`` (the demo preset's model and recipe, no flips) holds 10 % of them out to
rank epochs by mAP and to choose the decision threshold. ``--patch-size 14`` (the default) gives
the demo's 16 tokens at 56 px; 7 (the demo's own patch) gives 64 tokens. The test collages are made of MNIST
test digits only, never seen in training, and scored with the threshold the run chose.

Prints a Markdown table and writes JSON next to this script (results/multilabel_mnist_patch14.json).

    python benchmarks/multilabel_mnist.py [--train-images 40000] [--test-images 2000] [--epochs 8] [--patch-size 14]
    python benchmarks/multilabel_mnist.py --patch-size 7 --train-images 20000 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from vitkit.benchmark import save_for_host
from vitkit.data.load import load_data
from vitkit.interop import load_model
from vitkit.machine import cpu_has_native_bf16, host_record
from vitkit.train import resolve_config, train
from vitkit.train.multilabel import average_precision, mean_average_precision, multilabel_logits, score_multilabel

CELL = 28  # MNIST's size: a 2×2 grid makes 56 px collages


def collages(images: torch.Tensor, labels: torch.Tensor, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` uint8 collages ``(count, 56, 56)`` of 2–4 distinct digits in random cells, and
    their multi-hot targets ``(count, 10)``."""
    by_digit = [np.flatnonzero(labels.numpy() == d) for d in range(10)]
    rng = random.Random(seed)
    pictures = np.zeros((count, 2 * CELL, 2 * CELL), np.uint8)
    targets = np.zeros((count, 10), np.float32)
    for i in range(count):
        present = rng.sample(range(10), rng.randint(2, 4))
        for digit, cell in zip(present, rng.sample(range(4), len(present)), strict=True):
            row, col = divmod(cell, 2)
            pictures[i, row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL] = images[
                rng.choice(by_digit[digit]), 0
            ].numpy()
            targets[i, digit] = 1.0
    return pictures, targets


def write_csv(folder: Path, pictures: np.ndarray, targets: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    rows = []
    for i, (picture, target) in enumerate(zip(pictures, targets, strict=True)):
        Image.fromarray(picture).save(folder / f"{i:06d}.png")
        rows.append(f"{i:06d}.png,{';'.join(str(d) for d in np.flatnonzero(target))}")
    (folder / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return folder / "labels.csv"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=40_000, help="training collages (10 %% held out)")
    parser.add_argument("--test-images", type=int, default=2_000, help="test collages (MNIST test digits)")
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--patch-size", type=int, default=14, help="the demo model's patches at 56 px (7: 64 tokens)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    mnist = load_data("mnist")
    train_pictures, train_targets = collages(mnist.train.images, mnist.train.labels, args.train_images, args.seed)
    test_pictures, test_targets = collages(mnist.val.images, mnist.val.labels, args.test_images, args.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VITKIT_HOME"] = str(Path(tmp) / "home")  # the decoded cache goes away with the run
        csv_path = write_csv(Path(tmp) / "collages", train_pictures, train_targets)
        overrides = {
            "data": str(csv_path),
            "in_chans": 1,
            "img_size": 2 * CELL,
            "flip": False,  # a mirrored digit is no digit
            "cache_decoded": True,  # decode the PNGs once, then augment whole batches in memory
            "epochs": args.epochs,
            # merged into the demo's model_args: the paper's ViT, whose class token transformers' ViT has
            "model_args": {"patch_size": args.patch_size, "pos_embed": "learn", "pool": "token", "class_token": True},
            "seed": args.seed,
            "out": str(Path(tmp) / "run"),
        }
        config = resolve_config(preset="demo", overrides=overrides)
        start = time.perf_counter()
        summary = train(config, progress=False)
        wall = time.perf_counter() - start
        loaded = load_model(summary.run_dir)

    test_images = torch.stack([loaded.preprocess(picture) for picture in test_pictures])
    batches = DataLoader(
        TensorDataset(test_images, torch.from_numpy(test_targets)),
        batch_size=256,
        collate_fn=lambda rows: (torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]), []),
    )
    logits, targets, _ = multilabel_logits(loaded.model, batches, device=torch.device("cpu"))
    test = score_multilabel(logits, targets, threshold=loaded.threshold)
    random_scores = torch.rand(targets.shape, generator=torch.Generator().manual_seed(0))
    chance = {
        "label_frequency": targets.mean().item(),
        "random_scores_mAP": mean_average_precision(average_precision(random_scores, targets)),
    }
    row = {
        "train_collages": args.train_images,
        "test_collages": args.test_images,
        "architecture": loaded.model.config.describe(),
        "epochs": summary.epochs,
        "held_out_mAP": summary.final_metrics["val_mAP"],
        "test_mAP": test.mean_ap,
        "test_micro_f1": test.f1,
        "threshold": test.threshold,
        "per_class_ap_min": min(test.per_class_ap),
        "per_class_ap_max": max(test.per_class_ap),
        "train_seconds": summary.train_seconds,
        "wall_seconds": wall,
        "img_per_s": summary.train_images_per_second,
        "precision": summary.precision,
        "chance": chance,
    }
    machine = f"{cpu_name()}, {torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}"
    print(f"Machine: {machine}; torch {torch.__version__}\n")
    print(
        f"Model: {row['architecture']}; {args.train_images:,} training collages (10 % held out), {row['epochs']:g} "
        f"epochs; test: {args.test_images:,} collages of MNIST test digits\n"
    )
    print(
        "| test mAP | micro-F1 at threshold | threshold (chosen on held-out) | per-class AP | chance mAP | "
        "training time | whole run | train img/s | precision |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {100 * test.mean_ap:.2f} % | {100 * test.f1:.2f} % | {test.threshold:.3f} | "
        f"{100 * row['per_class_ap_min']:.2f}–{100 * row['per_class_ap_max']:.2f} % | "
        f"{100 * chance['random_scores_mAP']:.1f} % (label frequency {100 * chance['label_frequency']:.1f} %) | "
        f"{summary.train_seconds:.0f} s | {wall:.0f} s | {summary.train_images_per_second:.0f} | "
        f"{summary.precision} |"
    )
    results = Path(__file__).parent / "results" / f"multilabel_mnist_patch{args.patch_size}.json"
    save_for_host(results, host_record(), {"run": row})


if __name__ == "__main__":
    main()
