"""vitkit's training step against timm's, for the main job's model and for S/16.

One step is forward + backward + AdamW, vitkit with the kernels it chooses on this machine
(vitkit.decisions), timm's VisionTransformer of the same shape as it comes; the two are timed
interleaved, so their ratio is what to read. Target: vitkit >= 1.2x timm in bf16 on every host kind.
Keeps this host kind's entry in benchmarks/results/training_step.json.

    python benchmarks/training_step.py [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import timm
import torch

from vitkit.benchmark import interleaved, save_for_host, set_up_vitkit, train_step
from vitkit.machine import describe_host, host_record
from vitkit.models import build_network, get_config
from vitkit.train import resolve_config
from vitkit.train.run import build_model

TARGET = 1.2


def main_job_models() -> tuple[torch.nn.Module, torch.nn.Module, int, int]:
    """The demo preset's fresh model, timm's twin, and the preset's batch and image size. timm's
    VisionTransformer has no relative position embeddings: its twin has learned ones, which cost
    less (an addition per image instead of a product per layer), so the ratio is not flattered."""
    config = resolve_config(preset="demo")
    model = build_model(config, num_classes=10, in_chans=1)
    c = model.config
    twin = timm.models.vision_transformer.VisionTransformer(
        img_size=c.img_size[0],
        patch_size=c.patch_size,
        in_chans=c.in_chans,
        num_classes=c.num_classes,
        embed_dim=c.embed_dim,
        depth=c.depth,
        num_heads=c.num_heads,
        mlp_ratio=c.mlp_dim / c.embed_dim,
        class_token=c.class_token,
        global_pool="token" if c.pool == "token" else "avg",
    )
    return model, twin, config.batch_size, c.img_size[0]


def s16_models() -> tuple[torch.nn.Module, torch.nn.Module, int, int]:
    return build_network(get_config("S/16")), timm.create_model("vit_small_patch16_224"), 32, 224


def measure(name: str, models, precision: str, reps: int) -> dict:
    vitkit_model, timm_model, batch, img_size = models
    images = torch.randn(batch, vitkit_model.config.in_chans, img_size, img_size)
    vitkit_model, decisions = set_up_vitkit(
        vitkit_model, task="train", precision=precision, batch=batch, img_size=img_size
    )
    steps = {
        "vitkit": train_step(vitkit_model, images, precision, decisions[-1].choice),
        "timm": train_step(timm_model, images, precision),
    }
    times = interleaved(steps, reps=reps, warmup=3, device=images.device)
    rates = {library: batch / statistics.median(seconds) for library, seconds in times.items()}
    return {
        "model": name,
        "precision": precision,
        "batch": batch,
        "img_size": img_size,
        "vitkit_img_per_s": rates["vitkit"],
        "timm_img_per_s": rates["timm"],
        "ratio": rates["vitkit"] / rates["timm"],
        "vitkit_kernels": [f"{d.what} {d.choice} ({d.how})" for d in decisions],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    host = host_record()
    print(f"Machine: {describe_host(host)}\n")
    rows = [
        measure(name, build(), precision, args.reps)
        for name, build in (("main job (demo preset)", main_job_models), ("S/16", s16_models))
        for precision in ("bf16-autocast", "fp32")
    ]
    print("| model | precision | batch | vitkit img/s | timm img/s | vitkit / timm | vitkit's kernels |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['precision']} | {r['batch']} | {r['vitkit_img_per_s']:.0f} | "
            f"{r['timm_img_per_s']:.0f} | {r['ratio']:.2f}× | {', '.join(r['vitkit_kernels'])} |"
        )
    save_for_host(Path(__file__).parent / "results" / "training_step.json", host, {"rows": rows, "target": TARGET})


if __name__ == "__main__":
    main()
