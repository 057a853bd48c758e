"""`vitkit predict` end to end at each precision, and what `--precision auto` makes of it.

For each model (the main job's model on 28 px digits; S/16 and B/16 on 224 px pictures, with
random weights: speed does not depend on their values) it writes a folder of PNGs, then runs
`vitkit predict` on it as a user does, a fresh process each time: `--precision fp32`,
`--precision bf16`, `--int8` and `--precision auto`, in interleaved rounds. Before the rounds, one
run of auto on an empty `$VITKIT_HOME` shows the cost of a first use on a machine (measuring, and
quantizing where int8 is a candidate); the timed runs then find the choices and the int8 model
kept, as a user's next runs do. After them, one run of auto with new weights of the same shape
(a model trained since, say) shows what auto does when int8 would first have to quantize them.
Prints a table and keeps this host kind's entry in results/predict_precision.json.

    python benchmarks/predict_precision.py [--rounds 3] [--models demo S/16 B/16]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitkit
from vitkit.benchmark import save_for_host
from vitkit.machine import describe_host, host_record
from vitkit.train import resolve_config

#: model → (images, pixels, channels)
JOBS = {"demo": (1000, 28, 1), "S/16": (200, 224, 3), "B/16": (100, 224, 3)}
SETTINGS = {
    "fp32": ["--precision", "fp32"],
    "bf16": ["--precision", "bf16"],
    "int8": ["--int8"],
    "auto": ["--precision", "auto"],
}


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """A model folder of ``name`` (``demo``: the main job's model) with random weights."""
    torch.manual_seed(seed)
    if name == "demo":
        config = resolve_config(preset="demo")
        model = vitkit.create_model(config.model, num_classes=10, in_chans=1, img_size=28, **config.model_args)
    else:
        model = vitkit.create_model(name, num_classes=1000)
    return vitkit.save_model(folder / f"model-{seed}", model.eval())


def write_images(folder: Path, count: int, size: int, channels: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    mode = "L" if channels == 1 else "RGB"
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8).squeeze()
        Image.fromarray(pixels, mode).save(folder / f"{i:04d}.png")
    return folder


def predict(model: Path, images: Path, flags: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds the whole command took, and the precision it ran at."""
    command = [sys.executable, "-m", "vitkit.cli.main", "predict", str(model), str(images), "--json", *flags]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    chosen = re.findall(r"vitkit: precision for .*?: (\w+) \(", done.stderr)  # the last one is what ran
    return seconds, chosen[-1] if chosen else ("int8" if "--int8" in flags else flags[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(JOBS), choices=list(JOBS))
    args = parser.parse_args()
    host = host_record()
    env = {key: value for key, value in os.environ.items() if not key.startswith("VITKIT_")}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            count, size, channels = JOBS[name]
            work = Path(folder) / name.replace("/", "")
            model = build(name, work)
            images = write_images(work / "images", count, size, channels)
            env["VITKIT_HOME"] = str(work / "home")
            first, first_choice = predict(model, images, SETTINGS["auto"], env)
            times = {setting: [] for setting in SETTINGS}
            chosen = {}
            for _ in range(args.rounds):
                for setting, flags in SETTINGS.items():
                    seconds, chosen[setting] = predict(model, images, flags, env)
                    times[setting].append(seconds)
            new_weights, new_weights_choice = predict(build(name, work, seed=1), images, SETTINGS["auto"], env)
            best = min(statistics.median(times[s]) for s in ("fp32", "bf16", "int8"))
            rows.append(
                {
                    "model": name,
                    "images": count,
                    "px": size,
                    "seconds": times,
                    "auto_chose": chosen["auto"],
                    "auto_first_use": {"seconds": first, "chose": first_choice},
                    "auto_new_weights": {"seconds": new_weights, "chose": new_weights_choice},
                    "auto_vs_best": best / statistics.median(times["auto"]),
                }
            )
    print(f"Machine: {describe_host(host)}\n")
    print(
        "| model | images | fp32 s | bf16 s | int8 s | auto s (chose) | auto × best | auto's first use s "
        "| auto, new weights s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        median = {setting: statistics.median(seconds) for setting, seconds in row["seconds"].items()}
        print(
            f"| {row['model']} | {row['images']} | {median['fp32']:.1f} | {median['bf16']:.1f} | "
            f"{median['int8']:.1f} | {median['auto']:.1f} ({row['auto_chose']}) | {row['auto_vs_best']:.2f}× | "
            f"{row['auto_first_use']['seconds']:.1f} ({row['auto_first_use']['chose']}) | "
            f"{row['auto_new_weights']['seconds']:.1f} ({row['auto_new_weights']['chose']}) |"
        )
    out = Path(__file__).parent / "results" / "predict_precision.json"
    save_for_host(out, host, {"rounds": args.rounds, "rows": rows})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
