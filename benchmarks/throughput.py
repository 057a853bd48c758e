"""vitkit vs timm vs transformers: inference (eager, compiled, int8) and training img/s, FLOP
rate, memory, token scaling.

Runs the sets shown in the README and writes benchmarks/results/throughput.json. Each set is
one interleaved measurement (see vitkit.benchmark); ratios within a set are what to compare.

    python benchmarks/throughput.py [--reps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import torch

from vitkit.benchmark import format_table, run_benchmark

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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    machine = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    print(f"Machine: {machine}; torch {torch.__version__}\n")
    record = {"machine": machine, "torch": torch.__version__, "sets": []}
    for title, settings in SETS:
        results = run_benchmark(reps=args.reps, device=args.device, **settings)
        print(f"### {title}\n\n{format_table(results)}\n", flush=True)
        record["sets"].append({"title": title, "results": [dataclasses.asdict(r) for r in results]})
    out = Path(__file__).parent / "results" / "throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
