"""Is the model starved? Loader + augmentation img/s next to the demo model's training img/s.

Pipelines (each the demo preset's augmentation, batches of 128, no model):
- MNIST in memory, batched on the training device (vitkit's default for in-memory data): an
  index gather, one uint8 copy and one vectorised augmentation per batch;
- MNIST in memory, per image in the loader (``--no-batch-augment``: torchvision v2 per sample),
  0 and 2 worker processes;
- MNIST written as tar shards (``vitkit shards``): decoded by the loader's workers and augmented
  as batches (the default for shards), or per image (``--no-batch-augment``), 0 and 2 workers;
- 6,000 MNIST PNG files in a folder: ``--cache-decoded`` (decoded once, then batched like in-memory
  data) and per image (decoded every epoch), 0 and 2 workers.
Model: the demo model's training step (forward, backward, AdamW) on a batch of the same shape,
bf16 autocast where the CPU has native bf16. Loader figures are the median of 3 passes over 40
batches.

    python benchmarks/loader.py      # → benchmarks/results/loader.json
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from folder_demo import write_folder

from vitkit.benchmark import save_for_host, train_step
from vitkit.data.load import load_data
from vitkit.data.shards import write_shards
from vitkit.machine import cpu_has_native_bf16, host_record
from vitkit.seeds import SEEDING
from vitkit.train import resolve_config
from vitkit.train.distributed import Processes
from vitkit.train.inputs import decode_once, epoch_batches, image_size, run_datasets
from vitkit.train.run import build_model

BATCHES = 40


def loader_images_per_second(config, train_set) -> float:
    rates = []
    for epoch in range(3):
        batches = epoch_batches(
            config,
            train_set,
            epoch=epoch,
            images_done=0,
            seeding=SEEDING,
            steps=BATCHES,
            processes=Processes(),
            device=torch.device("cpu"),
        )
        start = time.perf_counter()
        count = sum(len(images) for images, _, _ in itertools.islice(batches, BATCHES))
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def model_images_per_second(config, size: int, in_chans: int, precision: str) -> float:
    model = build_model(config, num_classes=10, in_chans=in_chans)
    model.set_image_size(size)
    step = train_step(model, torch.randn(config.batch_size, in_chans, size, size), precision)
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(10):
        step()
    return 10 * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    demo = resolve_config(preset="demo")
    precision = "bf16-autocast" if cpu_has_native_bf16() else "fp32"
    mnist = load_data("mnist", in_chans=1)
    size = image_size(demo, mnist, demo.model_args["patch_size"])
    model_rate = model_images_per_second(demo, size, mnist.in_chans, precision)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["VITKIT_HOME"] = str(root / "home")
        write_shards(mnist, root / "shards", source="mnist", shard_size=5000)
        shards = load_data(str(root / "shards"), in_chans=1)
        write_folder(root / "images")
        pngs = load_data(str(root / "images"), in_chans=1)
        cached = decode_once(dataclasses.replace(demo, cache_decoded=True), pngs, size, Processes())
        pipelines = [("MNIST in memory, batched", mnist, True, 0)]
        pipelines += [("MNIST in memory, per image", mnist, False, workers) for workers in (0, 2)]
        pipelines += [("MNIST tar shards, decoded by workers, batched", shards, True, workers) for workers in (0, 2)]
        pipelines += [("MNIST tar shards, per image", shards, False, workers) for workers in (0, 2)]
        pipelines += [("PNG folder, --cache-decoded (batched)", cached, None, 0)]
        pipelines += [("PNG folder, per image", pngs, False, workers) for workers in (0, 2)]
        for name, data, batched, workers in pipelines:
            config = dataclasses.replace(demo, batch_augment=batched, workers=workers)
            train_set, _ = run_datasets(config, data, size, Processes())
            rows.append((name, workers, loader_images_per_second(config, train_set)))

    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}; model step {precision}, {size} px\n")
    print("| pipeline | loader workers | loader img/s | model img/s (training) | loader / model |")
    print("|---|---|---|---|---|")
    for name, workers, rate in rows:
        print(f"| {name} | {workers} | {rate:,.0f} | {model_rate:,.0f} | {rate / model_rate:.2f} |")
    records = [
        {
            "pipeline": name,
            "workers": workers,
            "loader_img_per_s": rate,
            "model_img_per_s": model_rate,
            "ratio": rate / model_rate,
        }
        for name, workers, rate in rows
    ]
    results = Path(__file__).parent / "results" / "loader.json"
    save_for_host(results, host_record(), {"precision": precision, "img_size": size, "rows": records})
    print(f"\nwrote {results}")


if __name__ == "__main__":
    main()
