"""The paper's central claim in miniature: a ViT, a hybrid and a BiT ResNet of similar compute,
trained from scratch on growing subsets of real data (the shape of the paper's Figures 3-5).

- Data: class-balanced subsets of MNIST's 60,000 training digits (600 → 60,000), and of the
  scikit-learn digits (1,438 training images of 8×8 px) for the smallest end; every image is shown
  at 32 px. Scored on MNIST's 10,000 test digits (the digits' 359 held-out ones).
- Models, ~23-29 MFLOPs per 32-px image each (measured here with FlopCounterMode):
  ViT: 6 blocks × 128 wide on 8×8-px patches (16 tokens + class token, the main job's ViT);
  hybrid: one ResNet stage (BiT's root and one bottleneck, output stride 4), 2×2 patches of its map
  (16 tokens), 3 blocks × 128; ResNet: resnetv2_small_bit (BiT's ResNet-v2, stages 2+2+2+2, root
  width 32).
- One recipe for all (the main job's: AdamW, lr 2e-3, weight decay 0.05, cosine, label smoothing 0.1,
  rotation ±10°, translation ±10 %, zoom 0.9-1.1, batch 128), as the paper used the same settings at
  every data size. Each run trains for the same number of images whatever the subset's size
  (``--images``: a small subset is seen for many epochs), so at each size the three models train
  equal epochs and nearly equal compute.
- Equal compute: on all 60,000 images, each model at several budgets (``--budgets``), plotted
  against its training FLOPs (3 × forward per image), the shape of Figure 5.

Prints Markdown tables, writes results/data_scaling.json (with the host) and the figures
docs/figures/data_scaling.png (top-1 against training-set size) and
docs/figures/data_scaling_compute.png (top-1 against training compute).

    python benchmarks/data_scaling.py [--seeds 0 1] [--sizes 600 2000 6000 20000 60000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from torch.utils.flop_counter import FlopCounterMode

from vitkit.benchmark import save_for_host
from vitkit.interop import create_model
from vitkit.machine import describe_host, host_record
from vitkit.train import resolve_config, train

#: the paper's ViT (class token, learned positions), as recorded; the demo preset's own model has
#: relative positions and average pooling, which model_args are merged into
VIT = {"embed_dim": 128, "num_heads": 4, "mlp_dim": 256, "pos_embed": "learn", "pool": "token", "class_token": True}
#: name → (registered model, model_args): each sees 32-px images
MODELS = {
    "ViT": ("Ti/16", {**VIT, "depth": 6, "patch_size": 8}),
    "hybrid": ("Ti/16", {**VIT, "depth": 3, "patch_size": 2, "hybrid_layers": [1]}),
    "ResNet": ("resnetv2_small_bit", {}),
}
IMG_SIZE = 32
MNIST_TRAIN, DIGITS_TRAIN = 60_000, 1_438  # the digits' training split (the other 359 are held out)
ROOT = Path(__file__).resolve().parent.parent


def forward_flops(model: str, model_args: dict, in_chans: int = 1) -> float:
    """FLOPs of one forward pass of one 32-px image (matmuls and convolutions, as FlopCounterMode counts)."""
    network = create_model(model, num_classes=10, in_chans=in_chans, img_size=IMG_SIZE, **model_args)
    if hasattr(network, "set_attention_kernel"):
        network.set_attention_kernel("explicit")  # plain matmuls: the fused kernel is not counted
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.randn(1, in_chans, IMG_SIZE, IMG_SIZE))
    return float(counter.get_total_flops())


def run(name: str, data: str, size: int | None, images: int, seed: int) -> dict:
    """One training run of model ``name`` on ``size`` images of ``data`` (None: all), for ``images``
    images in all; scored once, at the end, on the held-out set."""
    model, model_args = MODELS[name]
    batch = min(128, size or 128)  # a set smaller than a batch is one batch
    steps = max(1, images // batch)
    with tempfile.TemporaryDirectory() as out:
        config = resolve_config(
            preset="demo",
            overrides={
                "data": data,
                "model": model,
                "model_args": model_args,
                "img_size": IMG_SIZE,
                "train_images": size,
                "steps": steps,
                "batch_size": batch,
                "warmup_steps": max(1, steps // 20),
                "eval_every": 1_000_000,  # the last epoch only: no choice among epochs on the test set
                "seed": seed,
                "out": out,
            },
        )
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the run's epoch lines
            summary = train(config, progress=False)
        wall = time.perf_counter() - start
    return {
        "model": name,
        "data": data,
        "train_images": size,
        "images_seen": steps * batch,
        "epochs": summary.epochs,
        "seed": seed,
        "top1": summary.final_top1,
        "train_seconds": summary.train_seconds,
        "wall_seconds": wall,
        "img_per_s": summary.train_images_per_second,
        "precision": summary.precision,
    }


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (0 for one value) of top-1 fractions, in percent."""
    percents = [100 * v for v in values]
    return statistics.mean(percents), statistics.stdev(percents) if len(percents) > 1 else 0.0


def grouped(rows: list[dict], key: str) -> dict[tuple[str, int], list[float]]:
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        groups.setdefault((row["model"], row[key]), []).append(row["top1"])
    return groups


def size_table(rows: list[dict], sizes: list[int], title: str) -> str:
    groups = grouped(rows, "train_images")
    lines = [f"\n{title}\n", "| model | " + " | ".join(f"{n:,}" for n in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in MODELS:
        cells = []
        for n in sizes:
            mean, spread = mean_and_spread(groups[(name, n)])
            cells.append(f"{mean:.2f} ± {spread:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sizes(panels: list[tuple[str, list[dict], list[int]]], path: Path) -> None:
    """Top-1 against training-set size, one panel per dataset, error bars over seeds."""
    fig = Figure(figsize=(5.2 * len(panels), 4))
    for ax, (title, rows, sizes) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        groups = grouped(rows, "train_images")
        for name in MODELS:
            stats = [mean_and_spread(groups[(name, n)]) for n in sizes]
            ax.errorbar(sizes, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=name)
        ax.set(xscale="log", xlabel="training images", ylabel="held-out top-1 (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_compute(rows: list[dict], flops: dict[str, float], path: Path) -> None:
    """Top-1 against training compute (3 × forward FLOPs × images seen), all of MNIST's training set."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    groups = grouped(rows, "images_seen")
    for name in MODELS:
        budgets = sorted(images for model, images in groups if model == name)
        stats = [mean_and_spread(groups[(name, images)]) for images in budgets]
        compute = [3 * flops[name] * images / 1e12 for images in budgets]
        ax.errorbar(compute, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=name)
    ax.set(xscale="log", xlabel="training compute (TFLOPs)", ylabel="held-out top-1 (%)", title="MNIST, all 60,000")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 2, 4 rather than 2×10⁰
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sizes", type=int, nargs="+", default=[600, 2000, 6000, 20000, 60000])
    parser.add_argument("--images", type=int, default=48_000, help="images each MNIST run trains on")
    parser.add_argument("--digits-sizes", type=int, nargs="+", default=[100, 400, 1438])
    parser.add_argument("--digits-images", type=int, default=5_000, help="images each digits run trains on")
    parser.add_argument(
        "--budgets", type=int, nargs="+", default=[12_000, 24_000], help="equal compute: images on all of MNIST"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args()
    host = host_record()
    flops = {name: forward_flops(*MODELS[name]) for name in MODELS}
    print(f"Machine: {describe_host(host)}")
    print("Forward MFLOPs per 32-px image: " + ", ".join(f"{n} {f / 1e6:.1f}" for n, f in flops.items()), flush=True)

    mnist, digits, compute = [], [], []
    for seed in args.seeds:
        for name in MODELS:
            for n in args.sizes:
                size = None if n == MNIST_TRAIN else n  # all of it: MNIST's classes are not equal in size
                row = {**run(name, "mnist", size, args.images, seed), "train_images": n}
                mnist.append(row)
                print(f"mnist {n:>6,} {name:7s} seed {seed}: {100 * row['top1']:.2f} % ({row['wall_seconds']:.0f} s)")
            for n in args.digits_sizes:
                size = None if n >= DIGITS_TRAIN else n  # all of it: its classes are not equal in size
                digits.append({**run(name, "digits", size, args.digits_images, seed), "train_images": n})
                print(f"digits {n:>5,} {name:7s} seed {seed}: {100 * digits[-1]['top1']:.2f} %", flush=True)
    budgets = sorted({*args.budgets, args.images})
    for name in MODELS:
        for images in budgets:
            shared = [r for r in mnist if r["model"] == name and r["train_images"] == MNIST_TRAIN]
            if images == args.images and shared:
                compute += shared  # the size sweep's full-data runs are this budget's
                continue
            compute += [{**run(name, "mnist", None, images, seed), "train_images": MNIST_TRAIN} for seed in args.seeds]
            print(f"budget {images:>7,} {name:7s}: {100 * compute[-1]['top1']:.2f} %", flush=True)

    print(
        size_table(
            mnist,
            args.sizes,
            f"MNIST test top-1 (%), mean ± sd over seeds {args.seeds}, {args.images:,} images per run",
        )
    )
    print(size_table(digits, args.digits_sizes, f"digits held-out top-1 (%), {args.digits_images:,} images per run"))
    groups = grouped(compute, "images_seen")
    print("\nEqual compute on all of MNIST: top-1 (%) at training TFLOPs\n")
    print("| model | images | TFLOPs | top-1 |\n|---|---|---|---|")
    for (name, images), values in sorted(groups.items()):
        mean, spread = mean_and_spread(values)
        print(f"| {name} | {images:,} | {3 * flops[name] * images / 1e12:.2f} | {mean:.2f} ± {spread:.2f} |")

    args.figures.mkdir(parents=True, exist_ok=True)
    plot_sizes(
        [("MNIST", mnist, args.sizes), ("scikit-learn digits", digits, args.digits_sizes)],
        args.figures / "data_scaling.png",
    )
    plot_compute(compute, flops, args.figures / "data_scaling_compute.png")
    args.results.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("results", "figures")}
    record = {
        "settings": settings,
        "forward_flops": flops,
        "models": {name: {"model": m, "model_args": a} for name, (m, a) in MODELS.items()},
        "mnist": mnist,
        "digits": digits,
        "compute": compute,
    }
    save_for_host(args.results / "data_scaling.json", host, record)


if __name__ == "__main__":
    main()
