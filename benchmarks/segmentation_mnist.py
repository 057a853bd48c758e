"""The segmentation main job: `vitkit train --preset seg-demo` (Segmenter's linear decoder on a small
ViT, mnist-canvases) on this machine, scored as `vitkit eval` scores it, and on larger canvases.

- held-out: the 2,000 32-px canvases of MNIST *test* digits that rank the run's epochs, scored image
  by image (mIoU, per-class IoU, pixel and mean class accuracy as mmsegmentation defines them);
- larger canvases: 200 canvases of 96 px holding 3-5 test digits each, segmented at their own scale
  in sliding 32-px windows (the model never saw more than one digit, nor a 96-px image).

Prints a Markdown table and keeps one entry per host kind in results/segmentation_mnist.json.

    python benchmarks/segmentation_mnist.py [--seeds 0 1]
"""

from __future__ import annotations

import torch
from PIL import Image
from preset_runs import preset_runs, save_runs, seeds_argument

from vitkit.data.datasets.builtin import CANVAS_DILATION, load_mnist
from vitkit.data.datasets.canvases import CANVAS_CLASSES, digit_canvases
from vitkit.interop import load_model
from vitkit.machine import describe_host, host_record
from vitkit.segment import segment_image
from vitkit.train.segmentation import SegmentationScores, score_segmenter

LARGE_SIZE, LARGE_COUNT, LARGE_DIGITS = 96, 200, (3, 5)


def score_large_canvases(run_dir: str) -> SegmentationScores:
    """The run's segmenter on canvases three times the training size, at their own scale."""
    loaded = load_model(run_dir)
    test = load_mnist().val
    canvases = digit_canvases(
        test.images,
        test.labels,
        LARGE_COUNT,
        size=LARGE_SIZE,
        per_canvas=LARGE_DIGITS,
        dilation=CANVAS_DILATION,
        seed=2,
    )
    scores = SegmentationScores(len(loaded.class_names))
    for image, mask in zip(canvases.images, canvases.masks, strict=True):
        answer = segment_image(loaded, Image.fromarray(image[0].numpy()), short_side=LARGE_SIZE)
        scores.add(torch.from_numpy(answer.mask)[None], mask[None])
        scores.images += 1
    return scores


def main() -> None:
    seeds = seeds_argument(__doc__.splitlines()[0])
    host = host_record()
    machine = describe_host(host)
    rows = []
    for seed, summary, wall, out in preset_runs("seg-demo", seeds):
        held_out = score_segmenter(load_model(out), "mnist-canvases")
        large = score_large_canvases(out)
        rows.append(
            {
                "seed": seed,
                "mean_iou": held_out.mean_iou,
                "pixel_accuracy": held_out.pixel_accuracy,
                "mean_accuracy": held_out.mean_accuracy,
                "per_class_iou": held_out.to_dict(list(CANVAS_CLASSES))["per_class_iou"],
                "large_mean_iou": large.mean_iou,
                "large_pixel_accuracy": large.pixel_accuracy,
                "train_seconds": summary.train_seconds,
                "wall_seconds": wall,
                "epochs": summary.epochs,
                "img_per_s": summary.train_images_per_second,
                "precision": summary.precision,
                "architecture": summary.architecture,
            }
        )
        print(
            f"seed {seed}: mIoU {100 * held_out.mean_iou:.2f}% (96-px canvases {100 * large.mean_iou:.2f}%) "
            f"in {summary.train_seconds:.0f} s of training",
            flush=True,
        )

    print(f"\nMachine: {machine}\n")
    print(f"Model: {rows[0]['architecture']}, linear decoder\n")
    print(
        "| seed | held-out mIoU | pixel accuracy | mean class accuracy | 96-px canvases mIoU (windows) | "
        "training time | whole run | epochs | train img/s | precision |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {100 * r['mean_iou']:.2f} % | {100 * r['pixel_accuracy']:.2f} % | "
            f"{100 * r['mean_accuracy']:.2f} % | {100 * r['large_mean_iou']:.2f} % | {r['train_seconds']:.0f} s | "
            f"{r['wall_seconds']:.0f} s | {r['epochs']:.2f} | {r['img_per_s']:.0f} | {r['precision']} |"
        )
    save_runs("segmentation_mnist", host, rows)


if __name__ == "__main__":
    main()
