"""The demo preset on a small folder of real images: how a folder is fed, per image or decoded once.

Writes 6,000 MNIST training images (600 per class) and 1,000 test images (100 per class) as PNG
files in ImageFolder layout, then trains the demo preset (the same model and recipe each time, so
only the input pipeline differs) on the folder:
1. ``--no-cache-decoded``: every file decoded and augmented (torchvision) in the loader, every epoch;
2. the default, which decodes a folder that fits in memory once (``$VITKIT_HOME/decoded``, cold
   here, so the decoding counts) and augments whole batches on the device;
3. the default again, for as many epochs as fit in run 1's training time.
Held-out top-1 on the 1,000 test images, training time, img/s, and the share of the training time
spent waiting for data. Prints a Markdown table and writes results/folder_demo.json with the host.

    python benchmarks/folder_demo.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from PIL import Image

from vitkit.benchmark import save_for_host
from vitkit.data.datasets.builtin import load_mnist
from vitkit.machine import describe_host, host_record
from vitkit.train import resolve_config, train

RESULTS = Path(__file__).resolve().parent / "results" / "folder_demo.json"


def write_folder(root: Path, per_class_train: int = 600, per_class_val: int = 100) -> Path:
    """MNIST digits as PNGs in ImageFolder layout: ``root/train/<digit>/`` and ``root/val/<digit>/``."""
    mnist = load_mnist()
    for split, dataset, count in (("train", mnist.train, per_class_train), ("val", mnist.val, per_class_val)):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i, index in enumerate((dataset.labels == label).nonzero().flatten()[:count].tolist()):
                Image.fromarray(dataset.images[index, 0].numpy()).save(folder / f"{i}.png")
    return root


def run(data: Path, out: Path, epochs: float, **overrides) -> dict:
    config = resolve_config(
        preset="demo", overrides={"data": str(data), "in_chans": 1, "epochs": epochs, "out": str(out), **overrides}
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's epoch lines
        summary = train(config, progress=False)
    return {
        "flags": overrides,
        "epochs": epochs,
        "top1": summary.final_top1,
        "train_seconds": summary.train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "img_per_s": summary.train_images_per_second,
        "data_wait_fraction": summary.data_wait_fraction,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=10)
    args = parser.parse_args()
    host = host_record()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["VITKIT_HOME"] = str(root / "home")  # a cold cache: run 2 includes the decoding
        write_folder(root / "images")
        per_image = run(root / "images", root / "a", args.epochs, cache_decoded=False)
        decoded = run(root / "images", root / "b", args.epochs)
        budget_epochs = max(1, int(args.epochs * per_image["train_seconds"] / decoded["train_seconds"]))
        same_time = run(root / "images", root / "c", budget_epochs)
    rows = {
        "per image (--no-cache-decoded: decode + torchvision augmentation in the loader)": per_image,
        "decoded once (the default), batched augmentation": decoded,
        "decoded once, the same training time as per image": same_time,
    }
    print(f"{describe_host(host)}; demo preset, 6,000 training PNGs\n")
    print("| pipeline | epochs | held-out top-1 | training time | train img/s | waiting for data |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(
            f"| {name} | {row['epochs']:g} | {100 * row['top1']:.2f} % | {row['train_seconds']:.0f} s "
            f"| {row['img_per_s']:,.0f} | {100 * row['data_wait_fraction']:.0f} % |"
        )
    save_for_host(RESULTS, host, {"settings": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
