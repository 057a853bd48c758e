"""Is the model starved? Data-loader img/s next to model img/s for the demo job (README table).

Loader: the training pipeline of the demo preset on MNIST with random-resized crops (0.35-1),
read from memory (the built-in dataset) and from tar shards (`vitkit shards`), with 0 and 2
worker processes — batches pulled and dropped, no model. Model: the demo model's training step
(forward, backward, AdamW) on a batch of the same shape, bf16 autocast where the CPU has native
bf16. Each loader figure is the median of 3 passes over 40 batches of 128.

    python benchmarks/loader.py
"""

from __future__ import annotations

import itertools
import statistics
import tempfile
import time

import torch

from vitkit.benchmark import train_step
from vitkit.data.load import load_data
from vitkit.data.shards import write_shards
from vitkit.train import resolve_config
from vitkit.train.device import cpu_has_native_bf16
from vitkit.train.distributed import Processes
from vitkit.train.inputs import make_loader, run_datasets
from vitkit.train.run import build_model

BATCHES = 40


def loader_images_per_second(dataset, workers: int) -> float:
    rates = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        loader = make_loader(
            dataset, batch_size=128, indices=None, workers=workers, device=torch.device("cpu"), drop_last=True
        )
        start = time.perf_counter()
        count = sum(len(images) for images, _, _ in itertools.islice(loader, BATCHES))
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    config = resolve_config(preset="demo", overrides={"crop_scale": [0.35, 1.0]})
    precision = "bf16-autocast" if cpu_has_native_bf16() else "fp32"
    model = build_model(config, num_classes=10, in_chans=1)
    model.set_image_size(16)
    step = train_step(model, torch.randn(128, 1, 16, 16), precision)
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(10):
        step()
    model_rate = 10 * 128 / (time.perf_counter() - start)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_shards(load_data("mnist", in_chans=1), folder, source="mnist", shard_size=5000)
        for source in ("mnist", folder):
            data = load_data(source, in_chans=1)
            train_set, _ = run_datasets(config, data, 16, Processes())
            for workers in (0, 2):
                rows.append(
                    (
                        source if source == "mnist" else "MNIST tar shards",
                        workers,
                        loader_images_per_second(train_set, workers),
                    )
                )

    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; model step {precision}\n")
    print("| data | loader workers | loader img/s | model img/s (training) | loader / model |")
    print("|---|---|---|---|---|")
    for source, workers, rate in rows:
        name = "MNIST in memory" if source == "mnist" else source
        print(f"| {name} | {workers} | {rate:,.0f} | {model_rate:,.0f} | {rate / model_rate:.2f} |")


if __name__ == "__main__":
    main()
