"""Everything vitkit does fast, checked on a CUDA GPU in one run of under 10 minutes.

Each part runs as its own process (as a user would run it), under a time limit, and the figures
go to results/gpu_check.json with the host (GPU name, torch):

1. inference and training img/s, vitkit against timm, for S/16 and B/16 in bf16 (``vitkit benchmark``);
2. the main job (``vitkit train``, demo preset): time and MNIST top-1;
3. batched augmentation on the device (vitkit's ``BatchAugment``, batch 512) against the CPU;
4. ``vitkit serve`` latency and throughput with 1 and 8 clients (``benchmarks/serve.py``);
5. one DDP training step under torchrun with one process on the GPU.

``--dry-run`` runs every part in miniature on the CPU (tiny models in fp32, a few steps), to check
the script itself where no GPU is lent.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --dry-run  # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitkit.benchmark import save_for_host
from vitkit.data.augment import BatchAugment
from vitkit.machine import host_record

VITKIT = [sys.executable, "-m", "vitkit.cli.main"]
HERE = Path(__file__).parent


def run(name: str, command: list[str], timeout: float, env: dict[str, str]) -> dict:
    """One part in its own process: its wall time, exit status and the end of its output."""
    print(f"== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        status, output = "timeout", f"{error.stdout or ''}{error.stderr or ''}"
    seconds = time.perf_counter() - start
    print(output[-3000:], flush=True)
    return {"part": name, "status": status, "seconds": round(seconds, 1), "output_tail": output[-3000:]}


def augmentation(device: torch.device, batch: int, side: int) -> dict:
    """ms per batch of vitkit's batched augmentation on ``device`` and on the CPU."""
    images = torch.randint(0, 256, (batch, 1, side, side), dtype=torch.uint8)
    augment = BatchAugment(side, crop_scale=(0.5, 1.0), rotate=15, translate=0.1, shear=10, zoom=(0.9, 1.1))
    timings = {}
    for where in {torch.device("cpu"), device}:
        on = images.to(where)
        generator = torch.Generator(device=where).manual_seed(0)
        augment(on, generator)  # warm-up
        if where.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            augment(on, generator)
        if where.type == "cuda":
            torch.cuda.synchronize()
        timings[where.type] = 1000 * (time.perf_counter() - start) / 10
    return {"part": "batched augmentation", "batch": batch, "side": side, "ms_per_batch": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every part in miniature on the CPU")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA GPU is visible; run with --dry-run to check the script on the CPU")
    device = "cpu" if args.dry_run else "cuda"
    host = host_record()
    print(f"host: {json.dumps(host)}", flush=True)
    parts = []
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "VITKIT_HOME": str(Path(folder) / "home")}
        models = [("Ti/16", "32", "2")] if args.dry_run else [("S/16", "224", "64"), ("B/16", "224", "64")]
        for model, size, batch in models:
            for task in ("inference", "train"):
                out = Path(folder) / f"{model.replace('/', '')}-{task}.json"
                command = [*VITKIT, "benchmark", "--model", model, "--img-size", size, "--batch", batch]
                # (fp32 in a dry run: a CPU without native bf16 takes minutes to measure its emulated bf16 peak)
                precision = "fp32" if args.dry_run else "bf16-autocast"
                command += ["--task", task, "--libraries", "vitkit", "timm", "--precisions", precision]
                command += ["--device", device, "--no-memory", "--reps", "2" if args.dry_run else "10"]
                part = run(f"{task}, {model} {precision}, vitkit vs timm", [*command, "--json", str(out)], 240, env)
                if out.exists():
                    part["results"] = json.loads(out.read_text())
                parts.append(part)
        train = [*VITKIT, "train", "--device", device, "--out", str(Path(folder) / "main-job")]
        if args.dry_run:
            train += ["--steps", "5", "--data", "digits", "--img-size", "8", "--model-args", "patch_size=2"]
        part = run("the main job (vitkit train, demo preset)", train, 420, env)
        found = re.search(r"held-out top-1 ([\d.]+)%", part["output_tail"])
        part["top1_percent"] = float(found.group(1)) if found else None
        parts.append(part)
        parts.append(augmentation(torch.device(device), 16 if args.dry_run else 512, 28))
        print(json.dumps(parts[-1]), flush=True)
        serve = [sys.executable, str(HERE / "serve.py"), "--clients", "1", "8", "--rounds", "1"]
        serve += ["--out", str(Path(folder) / "serve.json")]
        serve += ["--arch", "Ti/16", "--seconds", "2"] if args.dry_run else ["--arch", "S/16", "--seconds", "10"]
        part = run("vitkit serve latency (benchmarks/serve.py)", serve, 240, env)
        if (Path(folder) / "serve.json").exists():
            part["results"] = json.loads((Path(folder) / "serve.json").read_text())
        parts.append(part)
        ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
        ddp += ["-m", "vitkit.cli.main", "train", "--device", device, "--steps", "20", "--quiet"]
        ddp += ["--out", str(Path(folder) / "ddp"), "--data", "digits", "--img-size", "8"]
        ddp += ["--model-args", "patch_size=2"]
        parts.append(run("one DDP step under torchrun, 1 process", ddp, 180, env))
    failed = [p["part"] for p in parts if p.get("status", 0) != 0]
    name = "gpu_check_dry_run.json" if args.dry_run else "gpu_check.json"
    save_for_host(HERE / "results" / name, host, {"device": device, "parts": parts})
    print(f"\n{len(parts) - len(failed)} of {len(parts)} parts ran; failed: {', '.join(failed) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
