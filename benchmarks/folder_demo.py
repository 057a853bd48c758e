"""The demo preset on a small folder of real images: per-image decoding vs ``--cache-decoded``.

Writes 6,000 MNIST training images (600 per class) and 1,000 test images (100 per class) as PNG
files in ImageFolder layout, then trains the demo preset on the folder:
1. per image: every file decoded and augmented (torchvision) in the loader, every epoch
   (``--no-batch-augment``: what a folder got before batched augmentation);
2. ``--cache-decoded`` for as many epochs: decoded once, batches augmented on the device;
3. ``--cache-decoded`` for as many epochs as fit in run 1's training time.
Held-out top-1 on the 1,000 test images, training time, img/s.

    python benchmarks/folder_demo.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image

from vitkit.data.datasets.builtin import load_mnist
from vitkit.train import resolve_config, train


def write_folder(root: Path, per_class_train: int = 600, per_class_val: int = 100) -> None:
    mnist = load_mnist()
    for split, dataset, count in (("train", mnist.train, per_class_train), ("val", mnist.val, per_class_val)):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i, index in enumerate((dataset.labels == label).nonzero().flatten()[:count].tolist()):
                Image.fromarray(dataset.images[index, 0].numpy()).save(folder / f"{i}.png")


def run(data: Path, out: Path, epochs: float, **overrides) -> tuple[float, float, float]:
    config = resolve_config(
        preset="demo", overrides={"data": str(data), "in_chans": 1, "epochs": epochs, "out": str(out), **overrides}
    )
    summary = train(config, progress=False)
    return summary.final_top1, summary.train_seconds, summary.train_images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["VITKIT_HOME"] = str(root / "home")  # a cold cache: run 2 includes the decoding
        write_folder(root / "images")
        per_image = run(root / "images", root / "a", args.epochs, batch_augment=False, cache_decoded=False)
        cached = run(root / "images", root / "b", args.epochs, cache_decoded=True)
        budget_epochs = max(1, int(args.epochs * per_image[1] / cached[1]))
        same_time = run(root / "images", root / "c", budget_epochs, cache_decoded=True)
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; demo preset, 6,000 training PNGs\n")
    print("| pipeline | epochs | held-out top-1 | training time | train img/s |")
    print("|---|---|---|---|---|")
    rows = [
        ("per image (decode + torchvision augmentation in the loader)", args.epochs, per_image),
        ("--cache-decoded (batched augmentation)", args.epochs, cached),
        ("--cache-decoded, the same training time as per image", budget_epochs, same_time),
    ]
    for name, epochs, (top1, seconds, rate) in rows:
        print(f"| {name} | {epochs:g} | {100 * top1:.2f} % | {seconds:.0f} s | {rate:,.0f} |")


if __name__ == "__main__":
    main()
