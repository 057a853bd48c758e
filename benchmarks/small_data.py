"""What ``vitkit train --data <small folder or CSV>`` gets with no other flag, on several small sets
of real images written as files, against the candidate recipes it was chosen from.

Sets (each written as a user would have it, held-out images in ``val/`` or, for the CSV, the
run's own held-out tenth):
- ``mnist-png``: 6,000 MNIST training digits as 28-px PNGs (600 per class), 1,000 test digits held out;
- ``digits-png``: the scikit-learn digits (8×8) scaled to 32 px, 1,437 training and 360 held out;
- ``faces``: scikit-image's LFW subset, faces against non-faces (25 px gray), 140 training, 60 held out;
- ``photo-crops``: 32-px RGB crops of six photos (scikit-image's astronaut, cat, coffee, rocket;
  scikit-learn's china and flower), class = photo: 400 per photo from its left 70 %, 100 held out
  from its right 30 %;
- ``collages-csv``: 4,000 multi-label 2×2 collages (32 px, 2-4 distinct MNIST digits at 16 px),
  labelled by a ``path,"3;7"`` CSV; scored by held-out mAP.

Each candidate is a set of flags on top of the default; ``default`` is no flag at all. Top-1 (mAP
for the CSV) is the run's held-out score at its last epoch. Prints a Markdown table and writes
results/small_data.json with the host. Needs scikit-image (``pip install -e .[benchmarks]``).

    python benchmarks/small_data.py [--candidates default ...] [--sets mnist-png ...] [--seeds 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from folder_demo import write_folder
from PIL import Image
from skimage import data as skimage_data
from skimage.data import lfw_subset
from sklearn.datasets import load_digits, load_sample_image

from vitkit.benchmark import save_for_host
from vitkit.data.datasets.builtin import load_mnist
from vitkit.machine import describe_host, host_record
from vitkit.train import resolve_config, train

RESULTS = Path(__file__).resolve().parent / "results" / "small_data.json"
#: candidate name → flags on top of the default (as ``vitkit train`` overrides); every run starts from scratch
CANDIDATES: dict[str, dict] = {
    "default": {},
    "demo": {"preset": "demo"},  # the default before: the MNIST main job's recipe
    "affine": {"rotate": 10.0, "translate": 0.1, "zoom": [0.9, 1.1]},  # the demo's augmentation
    "plain-vit": {"model_args": {"hybrid_layers": [], "patch_size": 8, "depth": 6}},  # 16 tokens, ~same FLOPs
}


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_digits_png(root: Path) -> Path:
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    for rank, index in enumerate(order):
        image = (digits.images[index] * (255 / 16)).astype(np.uint8)
        image = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR))
        split = "val" if rank < 360 else "train"
        _save(image, root / split / str(digits.target[index]) / f"{index}.png")
    return root


def write_faces(root: Path) -> Path:
    faces = (lfw_subset() * 255).astype(np.uint8)  # the first 100 are faces
    for index, image in enumerate(faces):
        label, rank = ("face", index) if index < 100 else ("other", index - 100)
        _save(image, root / ("val" if rank % 10 < 3 else "train") / label / f"{index}.png")
    return root


def write_photo_crops(root: Path, size: int = 32, train: int = 400, val: int = 100) -> Path:
    photos = {name: getattr(skimage_data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}
    photos |= {name: load_sample_image(f"{name}.jpg") for name in ("china", "flower")}
    rng = np.random.default_rng(0)
    for name, photo in photos.items():
        height, width = photo.shape[:2]
        cut = int(0.7 * width)  # held-out crops come from a part of the photo never trained on
        for split, count, (low, high) in (("train", train, (0, cut - size)), ("val", val, (cut, width - size))):
            for i in range(count):
                y, x = rng.integers(0, height - size), rng.integers(low, high)
                _save(photo[y : y + size, x : x + size], root / split / name / f"{i}.png")
    return root


def write_collages_csv(root: Path, count: int = 4_000, cell: int = 16) -> Path:
    mnist = load_mnist()
    small = [
        np.asarray(Image.fromarray(image[0].numpy()).resize((cell, cell), Image.BILINEAR))
        for image in mnist.train.images[:20_000]
    ]
    labels = mnist.train.labels[:20_000].numpy()
    by_digit = [np.flatnonzero(labels == d) for d in range(10)]
    rng = random.Random(0)
    rows = []
    for i in range(count):
        picture = np.zeros((2 * cell, 2 * cell), np.uint8)
        present = rng.sample(range(10), rng.randint(2, 4))
        for digit, place in zip(present, rng.sample(range(4), len(present)), strict=True):
            row, col = divmod(place, 2)
            picture[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = small[rng.choice(by_digit[digit])]
        _save(picture, root / "images" / f"{i}.png")
        rows.append(f'images/{i}.png,"{";".join(str(d) for d in sorted(present))}"')
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return root / "labels.csv"


SETS = {
    "mnist-png": write_folder,  # folder_demo's: 600 per class, 100 held out
    "digits-png": write_digits_png,
    "faces": write_faces,
    "photo-crops": write_photo_crops,
    "collages-csv": write_collages_csv,
}


def run(data: Path, candidate: str, seed: int, out: Path) -> dict:
    config = resolve_config(overrides={"data": str(data), "seed": seed, "out": str(out), **CANDIDATES[candidate]})
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        summary = train(config, progress=False)
    score = summary.final_metrics.get("val_mAP", summary.final_top1)
    return {
        "candidate": candidate,
        "flags": CANDIDATES[candidate],
        "seed": seed,
        "model": config.model,
        "epochs": summary.epochs,
        "steps": summary.steps,
        "score": score,
        "train_seconds": summary.train_seconds,
        "wall_seconds": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    host = host_record()
    print(describe_host(host))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["VITKIT_HOME"] = str(root / "home")  # the decoded sets stay out of the user's cache
        for name in args.sets:
            data = SETS[name](root / name)
            for candidate in args.candidates:
                for seed in args.seeds:
                    row = {"set": name, **run(data, candidate, seed, root / "runs" / f"{name}-{candidate}-{seed}")}
                    print(
                        f"{name} {candidate} seed {seed}: {100 * row['score']:.2f} ({row['wall_seconds']:.0f} s)",
                        flush=True,
                    )
                    rows.append(row)
    print("\n| recipe | " + " | ".join(args.sets) + " | mean |")
    print("|---|" + "---|" * (len(args.sets) + 1))
    for candidate in args.candidates:
        means = [
            statistics.mean(100 * r["score"] for r in rows if r["set"] == s and r["candidate"] == candidate)
            for s in args.sets
        ]
        print(f"| {candidate} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {statistics.mean(means):.2f} |")
    save_for_host(RESULTS, host, {"settings": vars(args), "candidates": CANDIDATES, "rows": rows})


if __name__ == "__main__":
    main()
