"""Self-supervised pre-training with 1 % of MNIST's labels (the self-supervised page's tables).

1. Pre-train with masked patch prediction (MPP) and with a masked autoencoder (MAE) on the
   60,000 MNIST training images, labels unused (presets mpp-demo and mae-demo).
2. Fine-tune each encoder on 600 labelled images (60 per class), and train the same
   architecture from scratch on the same 600 with the same recipe; score on the 10,000 test images.
3. Few-shot linear evaluation (1/5/10/25 shots, 3 seeds) and a logistic-regression linear probe
   of each frozen representation (random init and the 600-label model for reference).

Prints Markdown tables and writes results/self_supervised.json.

    python benchmarks/self_supervised.py [--pretrain-epochs 8] [--out runs/self-supervised]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vitkit.benchmark import save_for_host
from vitkit.data.transforms import eval_transform
from vitkit.interop import LoadedModel, load_model
from vitkit.machine import host_record
from vitkit.probe import fewshot_evaluate, linear_probe
from vitkit.train import resolve_config, train
from vitkit.train.run import build_model

SHOTS = (1, 5, 10, 25)
LABELLED = 600
#: the encoder of the mpp-demo / mae-demo presets (16 px MNIST, 4×4 patches: 16 tokens)
ENCODER = {"patch_size": 4, "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_dim": 256}


def finetune_settings(epochs: int) -> dict:
    """One recipe for every start (scratch or pre-trained): the demo preset's optimiser at
    batch 32 on the 600 labelled images, with random-resized crops."""
    return {
        "data": "mnist",
        "img_size": 16,
        "model_args": ENCODER,
        "train_images": LABELLED,
        "epochs": epochs,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_epochs": 2,
        "crop_scale": [0.35, 1.0],
        "checkpoint_every": 0,
    }


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


def run(config_overrides: dict, preset: str, run_dir: Path) -> dict:
    """Train (unless ``run_dir`` already holds a finished run) and return its summary."""
    if not finished(run_dir):
        train(resolve_config(preset=preset, overrides={**config_overrides, "out": str(run_dir)}), progress=False)
    return json.loads((run_dir / "summary.json").read_text())


def random_encoder() -> LoadedModel:
    config = resolve_config(preset="mpp-demo")
    torch.manual_seed(0)
    model = build_model(config, num_classes=0, in_chans=1)
    model.set_image_size(16)
    return LoadedModel(model.eval(), eval_transform(16, 1), [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-epochs", type=float, default=8, help="epochs over the 60k unlabeled images")
    parser.add_argument("--finetune-epochs", type=int, default=50, help="epochs over the 600 labelled images")
    parser.add_argument("--out", default="runs/self-supervised", help="folder for the runs (reused if finished)")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "self_supervised.json"))
    args = parser.parse_args()
    out = Path(args.out)

    pretrained = {}
    for objective in ("mpp", "mae"):
        tick = time.perf_counter()
        summary = run({"epochs": args.pretrain_epochs}, f"{objective}-demo", out / objective)
        pretrained[objective] = {"summary": summary, "seconds": summary["wall_seconds"]}
        print(f"pre-trained {objective}: {summary['final_metrics']} ({time.perf_counter() - tick:.0f} s)", flush=True)

    finetuned = []
    # Every start at 1× and 3× the epochs; scratch also at a 3× learning rate, so the baseline
    # is not held back by a recipe that suits the pre-trained starts.
    epochs = args.finetune_epochs
    variants = [("scratch", 1e-3, epochs), ("scratch", 3e-3, epochs), ("scratch", 1e-3, 3 * epochs)]
    for start in ("mpp", "mae"):
        variants += [(start, 1e-3, epochs), (start, 1e-3, 3 * epochs)]
    for start, lr, start_epochs in variants:
        settings = {**finetune_settings(start_epochs), "lr": lr}
        folder = (
            f"finetune-{start}"
            + (f"-lr{lr:g}" if lr != 1e-3 else "")
            + (f"-{start_epochs}epochs" if start_epochs != epochs else "")
        )
        if start != "scratch":
            settings["init"] = str(out / start)
        summary = run(settings, "demo", out / folder)
        finetuned.append({"start": start, "lr": lr, "epochs": start_epochs, "summary": summary})
        print(f"{folder}: top-1 {100 * summary['final_top1']:.2f}%", flush=True)

    representations = {
        "random init": random_encoder(),
        f"supervised, {LABELLED} labels": load_model(out / "finetune-scratch"),
        "MPP (no labels)": load_model(out / "mpp"),
        "MAE (no labels)": load_model(out / "mae"),
    }
    probes = {}
    for name, loaded in representations.items():
        probes[name] = {}
        for pool in ("token", "avg"):
            tick = time.perf_counter()
            fewshot = fewshot_evaluate(loaded, "mnist", shots=SHOTS, pool=pool)
            probe = linear_probe(loaded, "mnist", pool=pool)
            probes[name][pool] = {
                "fewshot": {
                    r.shots: {"mean": r.mean, "std": r.std, "per_seed": r.accuracies, "l2": r.chosen_l2}
                    for r in fewshot
                },
                "linear_probe": probe.top1,
            }
            print(f"{name} ({pool}): probed in {time.perf_counter() - tick:.0f} s", flush=True)

    print(f"\n### Fine-tuning on {LABELLED} labelled MNIST images (60 per class), 10,000 test images\n")
    print("| start | pre-training (60k images, no labels) | fine-tuning | test top-1 |")
    print("|---|---|---|---|")
    for row in finetuned:
        start = row["start"]
        if start == "scratch":
            done = "none"
        else:
            done = f"{start.upper()}, {args.pretrain_epochs:g} epochs, {pretrained[start]['seconds']:.0f} s"
        recipe = f"{row['epochs']} epochs, lr {row['lr']:g}"
        print(f"| {start} | {done} | {recipe} | {100 * row['summary']['final_top1']:.2f} % |")

    print("\n### Frozen representations: few-shot linear evaluation (mean ± std, 3 seeds, L2 by leave-one-out)")
    print("and a logistic-regression linear probe on all 60k training images\n")
    print("| representation | features | " + " | ".join(f"{s}-shot" for s in SHOTS) + " | linear probe (60k) |")
    print("|---|---|" + "---|" * (len(SHOTS) + 1))
    for name, pools in probes.items():
        for pool, result in pools.items():
            cells = [
                f"{100 * result['fewshot'][s]['mean']:.1f} ± {100 * result['fewshot'][s]['std']:.1f}" for s in SHOTS
            ]
            feature = "class token" if pool == "token" else "patch mean"
            print(f"| {name} | {feature} | " + " | ".join(cells) + f" | {100 * result['linear_probe']:.2f} |")

    document = {
        "pretrain_epochs": args.pretrain_epochs,
        "finetune_epochs": args.finetune_epochs,
        "pretrained": {k: v["summary"] for k, v in pretrained.items()},
        "finetuned": finetuned,
        "probes": probes,
    }
    save_for_host(Path(args.json), host_record(), document)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
