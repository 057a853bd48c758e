"""Time to accuracy of the main job: `vitkit train` (demo preset, MNIST) on this machine.

Target: >= 99.0 % MNIST test top-1 with <= 5 minutes of training on a 2-core CPU, on every host kind.
Prints a Markdown table and keeps one entry per host kind in results/mnist_demo.json.

    python benchmarks/mnist_demo.py [--seeds 0 1 2]
"""

from __future__ import annotations

from preset_runs import preset_runs, save_runs, seeds_argument

from vitkit.interop import load_model
from vitkit.machine import describe_host, host_record

TARGET_TOP1 = 0.99
TARGET_SECONDS = 300.0


def main() -> None:
    seeds = seeds_argument(__doc__.splitlines()[0])
    host = host_record()
    machine = describe_host(host)
    rows = []
    for seed, summary, wall, out in preset_runs("demo", seeds):
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
    save_runs("mnist_demo", host, rows)


if __name__ == "__main__":
    main()
