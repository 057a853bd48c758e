"""``vitkit`` — the command-line entry point."""

from __future__ import annotations

import argparse
import sys
import time

import torch

import vitkit
from vitkit.data import eval_transform

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _models(args: argparse.Namespace) -> None:
    for name in vitkit.list_models(args.pattern, aliases=args.aliases):
        config = vitkit.get_config(name)
        with torch.device("meta"):
            params = sum(p.numel() for p in vitkit.VisionTransformer(config).parameters())
        print(
            f"{name:24s} D={config.embed_dim:<5d} L={config.depth:<3d} heads={config.num_heads:<3d} "
            f"patch={config.stride:<3d} {config.img_size[0]}px  {params / 1e6:7.2f}M params"
        )


def _demo(args: argparse.Namespace) -> None:
    from skimage import data  # a real, public-domain photo that ships with scikit-image

    torch.manual_seed(0)
    model = vitkit.create_model(args.model).eval()
    config = model.config
    photo = getattr(data, args.image)()
    x = eval_transform(config.img_size, config.in_chans)(photo).unsqueeze(0)
    print(f"model      {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters (random init)")
    print(f"image      skimage.data.{args.image}() {photo.shape[1]}×{photo.shape[0]} → {tuple(x.shape)} in [-1, 1]")
    print(
        f"tokens     {config.grid[0]}×{config.grid[1]} patches of {config.stride}×{config.stride} px "
        f"+ 1 class token = {1 + config.grid[0] * config.grid[1]}"
    )
    with torch.inference_mode():
        start = time.perf_counter()
        features = model.forward_features(x)
        elapsed = time.perf_counter() - start
        logits = model.forward_head(features)
        maps = model.attention_maps(x)
    print(f"features   {tuple(features.shape)} in {elapsed * 1000:.0f} ms (fused attention)")
    print(f"logits     {tuple(logits.shape)}")
    print(f"attention  {len(maps)} blocks × {tuple(maps[0].shape)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="The Vision Transformer, from the paper to your images."
    )
    parser.add_argument("--version", action="version", version=f"vitkit {vitkit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list the registered model names and their sizes")
    models.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*base*'")
    models.add_argument("--aliases", action="store_true", help="list short names such as B/16 instead")
    models.set_defaults(func=_models)

    demo = commands.add_parser("demo", help="run a freshly initialised ViT on a real photo and describe each stage")
    demo.add_argument("--model", default="S/16", help="model name or alias (default: S/16)")
    demo.add_argument("--image", default="astronaut", choices=PHOTOS, help="scikit-image sample photo")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:  # our errors are written for people: no traceback
        print(f"vitkit: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
