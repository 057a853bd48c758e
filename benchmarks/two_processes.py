"""Two vitkit processes on one machine: each should run at about half its speed alone, not a
fraction of it (vitkit.cores shares the cores between them).

Trains the main job's model (demo preset, MNIST) for a fixed number of steps: alone; two runs side
by side sharing the cores (the default); and two side by side with every core each
(``VITKIT_THREADS``, what happened before the sharing). Prints a table and keeps this host kind's
entry in results/two_processes.json.

    python benchmarks/two_processes.py [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from vitkit.benchmark import save_for_host
from vitkit.machine import describe_host, host_record


def start(out: Path, steps: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "vitkit.cli.main", "train", "--steps", str(steps), "--out", str(out), "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def images_per_second(process: subprocess.Popen) -> float:
    output = process.communicate()[0]
    if process.returncode != 0:
        raise RuntimeError(output[-2000:])
    return float(re.search(r"([\d,]+) training img/s", output).group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per run (batch 128)")
    args = parser.parse_args()
    host = host_record()
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "VITKIT_THREADS")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        env["VITKIT_HOME"] = str(Path(folder) / "home")  # one measurement of the kernels, shared by every run
        runs = iter(range(100))
        alone = images_per_second(start(Path(folder) / str(next(runs)), args.steps, env))
        rows.append({"setting": "alone", "img_per_s": [alone]})
        for setting, extra in [
            ("two side by side, sharing the cores", {}),
            ("two side by side, every core each", {"VITKIT_THREADS": str(host["threads"])}),
        ]:
            pair = [start(Path(folder) / str(next(runs)), args.steps, {**env, **extra}) for _ in range(2)]
            rows.append({"setting": setting, "img_per_s": [images_per_second(p) for p in pair]})
    print(f"Machine: {describe_host(host)}")
    print(f"The main job's model, {args.steps} steps of 128 images per run\n")
    print("| setting | img/s per process | each × alone |")
    print("|---|---|---|")
    for row in rows:
        speeds = " / ".join(f"{s:,.0f}" for s in row["img_per_s"])
        ratios = " / ".join(f"{s / alone:.2f}" for s in row["img_per_s"])
        print(f"| {row['setting']} | {speeds} | {ratios} |")
    save_for_host(Path(__file__).parent / "results" / "two_processes.json", host, {"steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
