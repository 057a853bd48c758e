"""Time to accuracy of the main job: `vitkit train` (demo preset, MNIST) on this machine.

Target: >= 99.0 % MNIST test top-1 with <= 5 minutes of training on a 2-core CPU, on every host kind.
Prints a Markdown table and keeps one entry per host kind in results/mnist_demo.json.

    python benchmarks/mnist_demo.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from vitkit.benchmark import save_for_host
from vitkit.interop import load_model
from vitkit.machine import host_record
from vitkit.train import resolve_config, train

TARGET_TOP1 = 0.99
TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    args = parser.parse_args()

    host = host_record()
    machine = f"{host['cpu']} ({' '.join(host['cpu_flags'])}), {host['threads']} threads, torch {host['torch']}"
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as out:
            config = resolve_config(preset="demo", overrides={"seed": seed, "out": out})
            start = time.perf_counter()
            summary = train(config, progress=False)
            wall = time.perf_counter() - start
            architecture = load_model(out).model.config.describe()
        rows.append(
            {
                "seed": seed,
                "top1": summary.final_top1,
                "wall_seconds": wall,
                "train_seconds": summary.train_seconds,
                "architecture": architecture,
                "epochs": summary.epochs,
                "img_per_s": summary.train_images_per_second,
                "precision": summary.precision,
                "met": summary.final_top1 >= TARGET_TOP1 and summary.train_seconds <= TARGET_SECONDS,
            }
        )
        print(f"seed {seed}: top-1 {100 * summary.final_top1:.2f}% in {wall:.0f} s", flush=True)

    print(f"\nMachine: {machine}\n")
    print(f"Model: {rows[0]['architecture']}\n")
    print("| seed | MNIST test top-1 | training time | whole run | epochs | train img/s | precision | target met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {100 * r['top1']:.2f} % | {r['train_seconds']:.0f} s | {r['wall_seconds']:.0f} s | "
            f"{r['epochs']:.1f} | {r['img_per_s']:.0f} | {r['precision']} | {'yes' if r['met'] else 'no'} |"
        )
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    save_for_host(results / "mnist_demo.json", host, {"runs": rows})


if __name__ == "__main__":
    main()
