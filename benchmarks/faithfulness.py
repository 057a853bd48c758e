"""How faithful each explanation is, on held-out images of a trained model: deletion and insertion
AUC (see ``vitkit.analysis.faithfulness``) for rollout, relevance, Grad-CAM and a random order.

    vitkit train --out runs/main                     # the main job (MNIST, 99 %)
    python benchmarks/faithfulness.py runs/main --images 500   # → benchmarks/results/faithfulness.json

Each image is explained for its predicted class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vitkit import load_model
from vitkit.analysis import METHODS, explanation_maps, faithfulness, inspection_images, random_maps
from vitkit.analysis.explain import predicted_classes
from vitkit.benchmark import save_for_host
from vitkit.machine import host_record
from vitkit.train.run_folder import run_data

RESULTS = Path(__file__).parent / "results" / "faithfulness.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a run or model folder")
    parser.add_argument("--data", help="held-out images from this dataset (default: the run's own)")
    parser.add_argument("--images", type=int, default=500, help="held-out images to score")
    parser.add_argument("--steps", type=int, default=16, help="points on each curve")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(args.model)
    images = inspection_images(loaded, data=args.data or run_data(args.model), count=args.images)
    classes = predicted_classes(loaded.model, images)
    rows = []
    for method in (*METHODS, "random"):
        if method == "random":
            maps = random_maps(images.shape[0], loaded.model.config.grid, seed=0)
        else:
            chunks = zip(images.split(64), classes.split(64), strict=True)
            maps = torch.cat([explanation_maps(loaded.model, chunk, method, target) for chunk, target in chunks])
        score = faithfulness(loaded.model, images, maps, classes, steps=args.steps, multi_label=loaded.multi_label)
        rows.append((method, score.deletion_auc, score.insertion_auc))
    print(f"\n{images.shape[0]} held-out images of {args.model}, each explained for its predicted class")
    print("\n| method | deletion AUC (lower is better) | insertion AUC (higher is better) |")
    print("|---|---|---|")
    for method, deletion, insertion in rows:
        print(f"| {method} | {deletion:.3f} | {insertion:.3f} |")
    records = [{"method": m, "deletion_auc": d, "insertion_auc": i} for m, d, i in rows]
    save_for_host(RESULTS, host_record(), {"model": args.model, "images": images.shape[0], "rows": records})
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
