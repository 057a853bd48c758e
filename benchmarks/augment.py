"""Batched augmentation: vitkit's one-pass ``BatchAugment`` next to kornia and per-image torchvision.

The same operations on a batch of 128 MNIST images (28 px): random-resized crop (0.5–1), rotation
±15°, translation ±10 %, shear ±10°, scale 0.9–1.1, erasing with probability 0.25. Median of 5
timed repetitions after one warm-up; kornia is timed only if it is installed (it is not a vitkit
dependency: ``pip install kornia``).

    python benchmarks/augment.py      # → benchmarks/results/augment.json
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.transforms import v2

from vitkit.benchmark import save_for_host
from vitkit.data.augment import BatchAugment
from vitkit.data.datasets.builtin import load_mnist
from vitkit.machine import host_record

BATCH = 128


RESULTS = Path(__file__).parent / "results" / "augment.json"


def milliseconds(run: Callable[[], object]) -> float:
    run()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    images = load_mnist().train.images[:BATCH]
    ours = BatchAugment(28, crop_scale=(0.5, 1.0), rotate=15, translate=0.1, shear=10, zoom=(0.9, 1.1), erase=0.25)
    generator = torch.Generator().manual_seed(0)
    per_image = v2.Compose(
        [
            v2.RandomResizedCrop(28, scale=(0.5, 1.0), antialias=True),
            v2.RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomErasing(p=0.25),
        ]
    )
    rows = [
        ("vitkit BatchAugment (one grid_sample per batch)", milliseconds(lambda: ours(images, generator))),
        (
            "torchvision v2, per image",
            milliseconds(lambda: torch.stack([per_image(v2.functional.to_image(i)) for i in images])),
        ),
    ]
    try:
        import kornia.augmentation as K
    except ImportError:
        print("(kornia not installed: its row is left out)")
    else:
        pipeline = K.AugmentationSequential(
            K.RandomResizedCrop((28, 28), scale=(0.5, 1.0)),
            K.RandomAffine(15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10, p=1.0),
            K.RandomErasing(p=0.25),
        )
        rows.insert(1, ("kornia AugmentationSequential (batched)", milliseconds(lambda: pipeline(images / 255.0))))
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; batch of {BATCH} MNIST images\n")
    print("| augmentation | ms per batch | img/s |")
    print("|---|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {1000 * BATCH / ms:,.0f} |")
    records = [{"augmentation": name, "ms_per_batch": ms, "img_per_s": 1000 * BATCH / ms} for name, ms in rows]
    save_for_host(RESULTS, host_record(), {"batch": BATCH, "rows": records})
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
