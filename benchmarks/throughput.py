"""vitkit vs timm vs transformers: inference (eager, compiled, int8) and training img/s, FLOP
rate, memory, token scaling.

Runs the sets of the manual's performance page and keeps this host kind's in benchmarks/results/throughput.json
(one entry per host kind, the host with every row). Each set is
one interleaved measurement (see vitkit.benchmark); ratios within a set are what to compare.

    python benchmarks/throughput.py [--reps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vitkit.benchmark import format_table, run_benchmark, save_for_host
from vitkit.machine import host_record

SETS = [
    # (title, run_benchmark arguments)
    *[
        (
            f"Inference, {model}: eager, compiled and int8",
            {
                "model": model,
                "batch": 32,
                "precisions": ("fp32", "bf16-autocast", "bf16-weights", "int8"),
                "compile": ("vitkit", "timm"),
            },
        )
        for model in ("S/16", "B/16")
    ],
    (
        "Training step (forward + backward + AdamW), S/16",
        {
            "model": "S/16",
            "batch": 32,
            "task": "train",
            "libraries": ("vitkit", "timm"),
            "precisions": ("fp32", "bf16-autocast"),
            "grad_checkpointing": (False, True),
        },
    ),
    *[
        (
            f"Token scaling, S/16 inference at {size} px",
            {
                "model": "S/16",
                "batch": 8,
                "img_size": size,
                "libraries": ("vitkit", "timm"),
                "precisions": ("bf16-weights",),
            },
        )
        for size in (224, 384, 512)
    ],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    host = host_record()
    machine = host["gpu"] if args.device == "cuda" else f"{host['cpu']} ({' '.join(host['cpu_flags'])})"
    print(f"Machine: {machine}, {host['threads']} threads; torch {host['torch']}\n")
    sets = []
    for title, settings in SETS:
        results = run_benchmark(reps=args.reps, device=args.device, **settings)
        print(f"### {title}\n\n{format_table(results)}\n", flush=True)
        sets.append({"title": title, "results": [{**dataclasses.asdict(r), "host": host} for r in results]})
    out = Path(__file__).parent / "results" / "throughput.json"
    save_for_host(out, host, {"sets": sets})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
