"""``vitkit`` — the command-line entry point: parse, call the library, print."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import types
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import vitkit
from vitkit.analysis import METHODS, inspect_model, inspection_images
from vitkit.benchmark import LIBRARIES, PRECISIONS, explain_choices, format_table, run_benchmark
from vitkit.cli.arguments import nonnegative_float, pixel_count, port, positive_float, positive_int
from vitkit.cores import share_cores
from vitkit.data.images import DEFAULT_MAX_PIXELS
from vitkit.data.load import load_data
from vitkit.data.masks import IGNORE_INDEX
from vitkit.data.shards import write_shards
from vitkit.decisions import ENVIRONMENT, machine_fingerprint, set_up_inference
from vitkit.decisions import cache_path as decisions_cache_path
from vitkit.device import device_of, resolve_device
from vitkit.fileio import cache_dir
from vitkit.interop import convert, export_model, load_model, quantize
from vitkit.interop.convert import TARGETS
from vitkit.interop.export import EXPORT_FORMATS, check_export_path
from vitkit.interop.sources import ALLOW_NONFINITE_ENV
from vitkit.models import ViTConfig, parameter_count
from vitkit.predict import expand_image_paths, predict_files
from vitkit.probe import FEATURE_POOLS, fewshot_evaluate, linear_probe
from vitkit.segment import segment_files
from vitkit.serve import ServeSettings, serve, served_name
from vitkit.train import (
    MultiLabelScores,
    RunSummary,
    SingleLabelScores,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    resolve_config,
    resume_run,
    score_model,
    train,
)
from vitkit.train.distributed import DistributedFailure, from_environment
from vitkit.train.report import describe
from vitkit.train.run_folder import run_data, run_metrics, run_setting, run_split
from vitkit.train.segmentation import score_segmenter

VITKIT_PACKAGE = Path(vitkit.__file__).resolve().parent

#: what ``add_subparsers`` returns: each command's parser is added to it
Commands = argparse._SubParsersAction

MODEL_HELP = (
    "a run or model folder (vitkit, transformers, timm), a Google .npz, a pretrained name "
    "(vit_base_patch16_224[.TAG]), hf-hub:ORG/REPO[@REV] or google:DIR/FILE"
)


# ------------------------------------------------------------------ models
def _models(args: argparse.Namespace) -> None:
    if args.pretrained:
        _pretrained_table(args.pattern)
        return
    for name in vitkit.list_models(args.pattern, aliases=args.aliases):
        config = vitkit.get_config(name)
        params = parameter_count(config)
        if not isinstance(config, ViTConfig):
            print(f"{name:24s} {config.describe()}  {params / 1e6:7.2f}M params")
            continue
        print(
            f"{name:24s} D={config.embed_dim:<5d} L={config.depth:<3d} heads={config.num_heads:<3d} "
            f"patch={config.stride:<3d} {config.img_size[0]}px  {params / 1e6:7.2f}M params"
        )


def _pretrained_table(pattern: str | None) -> None:
    rows = vitkit.list_pretrained(pattern)
    width = max((len(w.name) for w in rows), default=4) + 2  # room for the default's " *"
    print(f"{'name':{width}s}  {'px':>4s}  {'classes':>7s}  {'top-1':>6s}  {'licence':12s}  trained on")
    for w in rows:
        top1 = f"{w.top1:.2f}" if w.top1 is not None else "-"
        name = w.name + (" *" if w.default else "")
        print(f"{name:{width}s}  {w.img_size:4d}  {w.num_classes:7d}  {top1:>6s}  {w.license:12s}  {w.data}")
    print(
        "\n* the default tag: a bare architecture name means it. top-1: ImageNet-1k as the source reports it. "
        "Any other hf-hub:ORG/REPO in timm's or transformers' layout and any google:DIR/FILE of "
        "gs://vit_models load too."
    )


# ------------------------------------------------------------------ train
def _parse_model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _or_none(kind: type) -> Any:
    """An argparse type that reads ``none`` as None (to switch off a preset's setting)."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """One flag per TrainConfig field that applies to ``command`` ("classify" or "pretrain"), its
    help taken from the field; unset flags stay unset. Settings that may be None take ``none``."""
    hints = typing.get_type_hints(TrainConfig)
    for spec in dataclasses.fields(TrainConfig):
        if spec.metadata.get("only", command) != command:
            continue
        flag = "--" + spec.name.replace("_", "-")
        kind = hints[spec.name]
        optional = isinstance(kind, types.UnionType)  # X | None
        if optional:
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        options: dict[str, Any] = {"help": spec.metadata["help"], "default": argparse.SUPPRESS, "dest": spec.name}
        if "choices" in spec.metadata:  # checked by TrainConfig, so a flag and a file fail alike
            options["metavar"] = "{" + ",".join(spec.metadata.get("flag_choices", spec.metadata["choices"])) + "}"
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is dict:
            options.update(nargs="+", action="extend", type=_parse_model_arg, metavar="KEY=VALUE")
        elif typing.get_origin(kind) is list:
            item = typing.get_args(kind)[0]
            options.update(nargs=spec.metadata["nargs"], type=item)
            if optional:  # either the values or the single word none
                options.update(nargs="+", type=_or_none(item))
        else:
            options["type"] = _or_none(kind) if optional else kind
        parser.add_argument(flag, **options)


def _add_run_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of a training command: config file, resume, quiet, and every setting."""
    parser.add_argument("--config", help="a .toml, .yaml or .json file of settings (names as the flags)")
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue an interrupted run exactly (--epochs / --steps may lengthen it)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="write into an --out folder that holds other files")
    _add_config_flags(parser, command)


def _checked_lists(overrides: dict[str, Any]) -> dict[str, Any]:
    """``--crop-scale none`` → None; otherwise a list flag must have its number of values."""
    for spec in dataclasses.fields(TrainConfig):
        values = overrides.get(spec.name)
        if not isinstance(values, list) or not isinstance(spec.metadata.get("nargs"), int):
            continue
        if values == [None]:
            overrides[spec.name] = None
        elif None in values or len(values) != spec.metadata["nargs"]:
            flag = "--" + spec.name.replace("_", "-")
            raise ValueError(f"{flag} takes {spec.metadata['nargs']} numbers or the word none, got {values}")
    return overrides


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if "model_args" in overrides:
        overrides["model_args"] = dict(overrides["model_args"])
    return _checked_lists(overrides)


def _resume(args: argparse.Namespace) -> RunSummary:
    if args.config:
        raise ValueError("--resume continues a run with its own settings; drop --config")
    return resume_run(args.resume, changes=_overrides(args), progress=not args.quiet)


def _train(args: argparse.Namespace) -> None:
    if args.resume:
        summary = _resume(args)
    else:
        config = resolve_config(file=args.config, overrides=_overrides(args))
        summary = train(config, progress=not args.quiet, force=args.force)
    _print_summary(summary)


def _pretrain(args: argparse.Namespace) -> None:
    if args.resume:
        summary = _resume(args)
    else:
        overrides = _overrides(args)
        # --objective alone starts from its demo preset; a preset in the file or flags still wins
        default = f"{overrides['objective']}-demo" if "objective" in overrides else None
        config = resolve_config(preset=default, file=args.config, overrides=overrides)
        if config.supervised:
            raise ValueError("say what to pre-train with: --objective mpp or --objective mae (or an mpp-/mae- preset)")
        summary = train(config, progress=not args.quiet, force=args.force)
    _print_summary(summary)


def _print_summary(summary: RunSummary) -> None:
    if not from_environment().is_main:  # under torchrun, rank 0 speaks for the job
        return
    if summary.final_top1 is not None:
        best = f" (best {100 * summary.best_top1:.2f}% at epoch {summary.best_epoch})" if summary.best_top1 else ""
        result = f"held-out top-1 {100 * summary.final_top1:.2f}%{best}, top-5 {100 * summary.final_top5:.2f}%"
    elif summary.ranked_by == "val_mIoU":  # segmentation
        result = describe(summary.final_metrics)
    elif summary.objective == "classify":  # multi-label
        result = f"{describe(summary.final_metrics)}, threshold {summary.final_metrics['val_threshold']:.3f}"
    else:
        result = f"{summary.objective} pre-training, {describe(summary.final_metrics)}; the encoder is in this folder"
    print(
        f"\n{summary.run_dir}: {result}\nmodel: {summary.architecture}\n"
        f"{summary.steps} steps ({summary.epochs:.2f} epochs) in {summary.wall_seconds:.0f} s, "
        f"{summary.train_images_per_second:.0f} training img/s on {summary.device} ({summary.precision}), "
        f"{100 * summary.data_wait_fraction:.0f} % of it waiting for data"
        + (f", {summary.skipped_files} unreadable file(s) skipped" if summary.skipped_files else "")
    )


# ------------------------------------------------------------------ eval / predict
def _eval(args: argparse.Namespace) -> None:
    loaded = load_model(args.model)
    data = _data_of(args)
    # the run's own data: its own held-out images
    holdout = {} if args.data else run_split(args.model)
    running, precision = _set_up_inference(loaded, args.precision, batch=args.batch_size)
    if loaded.segmenter:
        _eval_segmenter(args, running, data, {"split": args.split, "precision": precision, **holdout})
        return
    settings = {"split": args.split, "batch_size": args.batch_size, "precision": precision, **holdout}
    scores = score_model(running, data, **settings)
    int8 = None
    if args.int8:  # quantized from the float model, not the packed one
        quantized, _ = _set_up_inference(loaded, "int8", batch=args.batch_size)
        int8 = score_model(quantized, data, **{**settings, "precision": "int8"})
    if isinstance(scores, MultiLabelScores):
        _print_multilabel(args, data, precision, loaded.class_names, scores, int8)
    else:
        _print_single_label(args, data, precision, loaded.class_names, scores, int8)


def _eval_segmenter(args: argparse.Namespace, loaded: vitkit.LoadedModel, data: str, settings: dict) -> None:
    if args.int8:
        raise ValueError("--int8 applies to classifiers; a segmenter is scored in float")
    ignore_index = run_setting(args.model, "ignore_index", IGNORE_INDEX)
    scores = score_segmenter(loaded, data, ignore_index=ignore_index, **settings)
    if args.json:
        document = {"data": data, "split": args.split, "precision": settings["precision"]}
        print(json.dumps({**document, **scores.to_dict(loaded.class_names)}, indent=2))
        return
    print(
        f"{data} ({args.split}, {scores.images} images at their own size, {settings['precision']}): {scores.summary()}"
    )
    print(scores.per_class_table(loaded.class_names))
    _print_skipped(scores.skipped)


def _print_single_label(
    args: argparse.Namespace,
    data: str,
    precision: str,
    class_names: list[str],
    scores: SingleLabelScores,
    int8: SingleLabelScores | None,
) -> None:
    if args.json:
        document = {"data": data, "split": args.split, "precision": precision, **scores.to_dict(class_names)}
        if int8 is not None:
            document["int8"] = int8.to_dict(class_names, baseline=scores)
        print(json.dumps(document, indent=2))
        return
    _print_summaries(args, data, precision, scores, int8)
    if int8 is not None:
        print(f"  int8 vs {precision}: {int8.compared_with(scores)}")
    print("per class" + (f" ({precision} | int8)" if int8 else ""))
    print(scores.per_class_table(class_names, beside=int8))
    _print_skipped(scores.skipped)


def _print_multilabel(
    args: argparse.Namespace,
    data: str,
    precision: str,
    class_names: list[str],
    scores: MultiLabelScores,
    int8: MultiLabelScores | None,
) -> None:
    if args.json:
        document = {"data": data, "split": args.split, **scores.to_dict(class_names)}
        if int8 is not None:
            document["int8"] = int8.to_dict(class_names)
        print(json.dumps(document, indent=2))
        return
    _print_summaries(args, data, precision, scores, int8)
    print(scores.per_class_table(class_names))
    _print_skipped(scores.skipped)


def _print_summaries(
    args: argparse.Namespace,
    data: str,
    precision: str,
    scores: SingleLabelScores | MultiLabelScores,
    int8: SingleLabelScores | MultiLabelScores | None,
) -> None:
    for label, scored in [(precision, scores), ("int8", int8)]:
        if scored is not None:
            print(f"{data} ({args.split}, {scored.count} images, {label}): {scored.summary()}")


def _print_skipped(skipped: list[str]) -> None:
    if skipped:
        print(f"{len(skipped)} unreadable file(s) skipped")


def _data_of(args: argparse.Namespace) -> str:
    data = args.data or run_data(args.model)
    if data is None:
        raise ValueError(f"{args.model} is not a run folder; say which data to use with --data")
    return data


def _number_list(kind: type) -> Any:
    """An argparse type for comma-separated numbers, e.g. ``1,5,10,25``."""

    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from error

    return parse


def _l2_list(text: str) -> list:
    return ["auto"] if text == "auto" else _number_list(nonnegative_float)(text)


def _fewshot(args: argparse.Namespace) -> None:
    data = _data_of(args)
    results = fewshot_evaluate(
        load_model(args.model), data, shots=args.shots, seeds=range(args.seeds), l2s=args.l2, pool=args.pool
    )
    if args.json:
        rows = [
            {
                "shots": r.shots,
                "l2": r.l2,
                "mean": r.mean,
                "std": r.std,
                "per_seed": r.accuracies,
                "chosen_l2": r.chosen_l2,
            }
            for r in results
        ]
        print(json.dumps({"data": data, "pool": args.pool, "results": rows}, indent=2))
        return
    print(f"few-shot linear evaluation on {data} (held-out split), {args.seeds} seeds, features: {args.pool}")
    for r in results:
        chosen = f" (chosen: {', '.join(f'{v:g}' for v in r.chosen_l2)})" if r.l2 == "auto" else ""
        print(f"  {r.shots:3d}-shot  {100 * r.mean:6.2f}% ± {100 * r.std:.2f}  l2 {r.l2}{chosen}")


def _linear_probe(args: argparse.Namespace) -> None:
    data = _data_of(args)
    result = linear_probe(
        load_model(args.model), data, train_images=args.train_images, regularization=args.c, pool=args.pool
    )
    if args.json:
        print(json.dumps({"data": data, "pool": args.pool, **dataclasses.asdict(result)}, indent=2))
        return
    print(
        f"linear probe on {data}: held-out top-1 {100 * result.top1:.2f}% ({result.test_images} images); "
        f"fit on {result.train_images} training images (their top-1 {100 * result.train_top1:.2f}%)"
    )


def _set_up_inference(
    loaded: vitkit.LoadedModel, precision: str, *, batch: int, int8: bool = False, images: int | None = None
) -> tuple[vitkit.LoadedModel, str]:
    """``loaded`` as this machine runs it fastest on a job of ``images`` (when known), and the
    precision to run it at (measured once, then cached; see vitkit.decisions): its model may be a
    copy with packed linear layers, for inference only; ``precision`` ``int8`` (or ``auto``
    choosing it, where ``int8`` lets it) runs its int8 model. Each decision is said on stderr."""
    if loaded.segmenter and precision == "int8":
        raise ValueError("--int8 applies to classifiers; run a segmenter in fp32 or bf16")
    network = loaded.model.backbone if loaded.segmenter else loaded.model
    start = time.perf_counter()
    inference = set_up_inference(
        loaded.model,
        precision=precision,
        batch=batch,
        img_size=network.config.img_size[0],
        device=device_of(network),
        int8=int8,
        images=images,
    )
    for decision in inference.decisions:
        print(f"vitkit: {decision}", file=sys.stderr)
    if inference.precision == "int8":
        print(
            f"vitkit: int8 model ready in {time.perf_counter() - start:.1f} s "
            f"(quantized models are kept in {cache_dir() / 'int8'})",
            file=sys.stderr,
        )
    return dataclasses.replace(loaded, model=inference.model), inference.precision


def _predict(args: argparse.Namespace) -> None:
    files = expand_image_paths(args.images)  # before the model, which may have to be downloaded
    if not files:
        raise ValueError(f"no image files in {', '.join(args.images)}")
    loaded = load_model(args.model, class_names=args.class_names)
    if loaded.segmenter:
        _segment(args, loaded, files)
        return
    precision = "int8" if args.int8 else args.precision
    loaded, precision = _set_up_inference(loaded, precision, batch=min(len(files), 64), int8=True, images=len(files))
    predictions = predict_files(loaded, files, top_k=args.top_k, precision=precision, max_pixels=args.max_pixels)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        for prediction in predictions:
            if prediction.error:
                print(f"{prediction.path}: {prediction.error}")
            elif prediction.labels is not None:
                chosen = "  ".join(f"{name} {100 * p:.1f}%" for name, p in prediction.labels)
                print(f"{prediction.path}: {chosen or f'no label above {100 * loaded.threshold:.1f}%'}")
            else:
                ranked = "  ".join(f"{name} {100 * p:.1f}%" for name, p in prediction.top)
                print(f"{prediction.path}: {ranked}")
    if predictions and all(p.error for p in predictions):
        raise ValueError(f"none of the {len(predictions)} image(s) could be read")


def _segment(args: argparse.Namespace, loaded: vitkit.LoadedModel, files: list[Path]) -> None:
    """``vitkit predict`` with a segmenter: a mask and an overlay PNG per image, and the areas."""
    loaded, precision = _set_up_inference(loaded, "int8" if args.int8 else args.precision, batch=1)
    results = segment_files(
        loaded, files, Path(args.out), precision=precision, max_pixels=args.max_pixels, short_side=args.short_side
    )
    if args.json:
        print(json.dumps([result.to_dict() for result in results], indent=2))
    for result in results if not args.json else []:
        if result.error:
            print(f"{result.path}: {result.error}")
            continue
        areas = "  ".join(f"{name} {100 * share:.1f}%" for name, share in result.areas.items())
        print(f"{result.path}: {areas}\n  → {result.mask}, {result.overlay}")
    if results and all(result.error for result in results):
        raise ValueError(f"none of the {len(results)} image(s) could be read")


def _inspect(args: argparse.Namespace) -> None:
    loaded = load_model(args.model).encoder()  # a segmenter's figures are its backbone's
    data = args.data or run_data(args.model)
    if args.images:  # the attention distance is then averaged over the files given
        shown, averaged = inspection_images(loaded, paths=args.images, count=args.count), None
    else:  # one read of the data: the first images are shown, a larger sample is averaged
        averaged = inspection_images(loaded, data=data, count=max(args.count, args.distance_images))
        shown = averaged[: args.count]
    report = inspect_model(
        loaded.model,
        shown,
        args.out,
        distance_images=averaged,
        class_names=loaded.class_names,
        target=None if args.explain_class is None else loaded.class_index(args.explain_class),
        methods=args.explain,
        measure_faithfulness=args.faithfulness,
        multi_label=loaded.multi_label,
        force=args.force,
    )
    for title, path, _ in report.figures:
        print(f"{path}  {title}")
    for title, reason in report.skipped:
        print(f"skipped {title}: {reason}")
    if report.faithfulness:
        print(f"faithfulness on {shown.shape[0]} image(s) (AUC of deletion: lower is better; of insertion: higher)")
        for method, score in report.faithfulness.items():
            print(f"  {method:10s} deletion {score.deletion_auc:.3f}  insertion {score.insertion_auc:.3f}")
    print(f"open {report.page}")


def _benchmark(args: argparse.Namespace) -> None:
    if args.explain:
        print(f"what vitkit chooses on this machine ({machine_fingerprint(torch.device(args.device))}):")
        for img_size in args.img_size:
            settings = {"batch": args.batch, "img_size": img_size, "task": args.task, "device": args.device}
            for decision in explain_choices(model=args.model, precisions=tuple(args.precisions), **settings):
                print(f"  {decision}")
        print(f"cached in {decisions_cache_path()}; force a choice with {', '.join(sorted(ENVIRONMENT.values()))}")
        return
    results = []
    for img_size in args.img_size:
        results += run_benchmark(
            model=args.model,
            batch=args.batch,
            img_size=img_size,
            task=args.task,
            libraries=tuple(args.libraries),
            precisions=tuple(args.precisions),
            compile=tuple(args.libraries) if args.compile else (),
            grad_checkpointing=(False, True) if args.grad_checkpointing else (False,),
            reps=args.reps,
            memory=args.memory,
            device=args.device,
        )
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2) + "\n")
        print(f"wrote {args.json}")


def _shards(args: argparse.Namespace) -> None:
    data = load_data(args.data, in_chans=args.in_chans, val_fraction=args.val_fraction)
    data.check_image_labels(args.data, "vitkit shards")
    manifest = write_shards(data, args.out, source=args.data, shard_size=args.shard_size, force=args.force)
    for split, shards in manifest["splits"].items():
        print(f"{split}: {sum(s['count'] for s in shards):,} images in {len(shards)} shard(s)")
    print(f"wrote {Path(args.out) / 'shards.json'}; train on it with vitkit train --data {args.out}")


def _convert(args: argparse.Namespace) -> None:
    written = convert(
        args.src,
        args.dst,
        to=args.to,
        architecture=args.architecture,
        metrics=run_metrics(args.src),
        overwrite=args.force,
    )
    print(f"wrote {written} ({args.to})")


def _serve(args: argparse.Namespace) -> None:
    device = resolve_device("cpu" if args.int8 else args.device)
    loaded = load_model(args.model, device=str(device), architecture=args.architecture, class_names=args.class_names)
    settings = ServeSettings(
        model_name=served_name(args.model),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        precision="int8" if args.int8 else args.precision,
        api_key=os.environ.get("VITKIT_API_KEY") if args.api_key is None else args.api_key,  # "" is refused
        max_upload_mb=args.max_upload_mb,
        allowed_hosts=("localhost", *args.allowed_hosts),
        header_timeout_s=args.header_timeout_s,
        keep_alive_s=args.keep_alive_s,
        max_connections=args.max_connections,
        max_pixels=args.max_pixels,
    )
    # Once the settings are known to be right: measuring takes a moment. Batches run the fastest
    # form (int8 included); explanations take gradients through the float model, kept beside it.
    running, precision = _set_up_inference(loaded, settings.precision, batch=args.max_batch, int8=True)
    settings = dataclasses.replace(settings, precision=precision)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"vitkit: warning: serving on {args.host}: every machine that can reach this one can use the model"
            + ("" if settings.api_key else ", and no --api-key is set"),
            file=sys.stderr,
        )
    print(
        f"serving {args.model} on http://{args.host}:{args.port}/ ({settings.precision}, batches of up to "
        f"{settings.max_batch}, waiting up to {settings.max_wait_ms:g} ms); API docs at /docs",
        flush=True,
    )
    serve(loaded, settings, host=args.host, port=args.port, log_level=args.log_level, model=running.model)


def _export(args: argparse.Namespace) -> None:
    if args.int8 and args.format != "onnx":
        raise ValueError("an int8 export is ONNX (ONNX Runtime runs its int8 matmuls); drop --format pt2")
    check_export_path(args.out, args.format, overwrite=args.force)  # before the model is loaded
    loaded = load_model(args.model)
    model = loaded.model
    if args.int8:
        written = quantize(model, dynamic=args.dynamic).save(args.out)
    else:
        written = export_model(model, args.out, format=args.format, dynamic=args.dynamic, overwrite=args.force)
    config = loaded.config
    dynamic = args.dynamic or loaded.segmenter
    size = f"H×W multiples of {config.stride}" if dynamic else f"{config.img_size[0]}×{config.img_size[1]}"
    print(f"wrote {written} ({args.format}{', int8' if args.int8 else ''}, input B×{config.in_chans}×{size})")


# ------------------------------------------------------------------ parser
def _add_inference_flags(
    command: argparse.ArgumentParser,
    *,
    precision: str,
    auto: str = "the faster here of fp32 and bf16",
    int8_help: str = "int8 linear layers, run by ONNX Runtime on the CPU (see vitkit.quantize)",
) -> None:
    command.add_argument(
        "--precision",
        default=precision,
        choices=("auto", "bf16", "fp32"),
        help=f"number format (auto: {auto}, measured once and cached; VITKIT_PRECISION forces one)",
    )
    command.add_argument("--int8", action="store_true", help=int8_help)


def _add_max_pixels(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--max-pixels",
        type=pixel_count,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images with more pixels, from their header, before decoding (default {DEFAULT_MAX_PIXELS:,})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitkit", description="The Vision Transformer, from the paper to your images."
    )
    parser.add_argument("--version", action="version", version=f"vitkit {vitkit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # in the order `vitkit --help` lists them
    _add_training_commands(commands)
    _add_eval_command(commands)
    _add_probe_commands(commands)
    _add_predict_command(commands)
    _add_inspect_command(commands)
    _add_shards_command(commands)
    _add_convert_commands(commands)
    _add_serve_command(commands)
    _add_benchmark_command(commands)
    _add_models_command(commands)
    _add_allow_nonfinite(commands)
    return parser


def _add_training_commands(commands: Commands) -> None:
    train_cmd = commands.add_parser(
        "train",
        help="train or fine-tune a ViT (no arguments: the demo preset on MNIST)",
        description="Settings come from the preset, then --config FILE, then the flags below.",
    )
    _add_run_flags(train_cmd, "classify")
    train_cmd.set_defaults(func=_train)

    pretrain_cmd = commands.add_parser(
        "pretrain",
        help="self-supervised pre-training: masked patch prediction (mpp) or masked autoencoder (mae)",
        description="--objective mpp|mae starts from the <objective>-demo preset (MNIST on a CPU); "
        "--preset mpp-paper / mae-paper hold the papers' settings. Fine-tune the result with "
        "vitkit train --init RUN_DIR.",
    )
    _add_run_flags(pretrain_cmd, "pretrain")
    pretrain_cmd.set_defaults(func=_pretrain)


def _add_eval_command(commands: Commands) -> None:
    eval_cmd = commands.add_parser(
        "eval", help="accuracy of a trained model: top-1, top-5, per class (multi-label: mAP, per-class AP, F1)"
    )
    eval_cmd.add_argument("model", help=MODEL_HELP)
    eval_cmd.add_argument("--data", help="dataset to evaluate on (default: the run's own data)")
    eval_cmd.add_argument("--split", default="val", choices=("val", "train"), help="which part of the data")
    eval_cmd.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    eval_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_inference_flags(eval_cmd, precision="fp32", int8_help="also score the int8 model, next to the float one")
    eval_cmd.set_defaults(func=_eval)


def _add_probe_commands(commands: Commands) -> None:
    """The frozen-feature evaluations: fewshot and linear-probe."""
    fewshot_cmd = commands.add_parser(
        "fewshot", help="few-shot linear evaluation of frozen features (paper §4.1): closed-form least squares"
    )
    fewshot_cmd.add_argument("model", help=MODEL_HELP)
    fewshot_cmd.add_argument("--data", help="dataset: shots from its training split, scored on its held-out split")
    fewshot_cmd.add_argument(
        "--shots", type=_number_list(positive_int), default=[1, 5, 10, 25], help="images per class, comma-separated"
    )
    fewshot_cmd.add_argument("--seeds", type=positive_int, default=3, help="draws of the shots (mean ± std reported)")
    fewshot_cmd.add_argument(
        "--l2",
        type=_l2_list,
        default=["auto"],
        help="auto (chosen per solve by leave-one-out on the shots) or L2 strengths, comma-separated",
    )
    fewshot_cmd.add_argument("--pool", default="head", choices=FEATURE_POOLS, help="which features (see vitkit.probe)")
    fewshot_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fewshot_cmd.set_defaults(func=_fewshot)

    probe_cmd = commands.add_parser("linear-probe", help="logistic regression on frozen features")
    probe_cmd.add_argument("model", help=MODEL_HELP)
    probe_cmd.add_argument("--data", help="dataset (default: the run's own data)")
    probe_cmd.add_argument(
        "--train-images", type=positive_int, help="fit on this many training images (equal per class)"
    )
    probe_cmd.add_argument("--c", type=positive_float, default=1.0, help="inverse L2 strength (scikit-learn's C)")
    probe_cmd.add_argument("--pool", default="head", choices=FEATURE_POOLS, help="which features (see vitkit.probe)")
    probe_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe_cmd.set_defaults(func=_linear_probe)


def _add_predict_command(commands: Commands) -> None:
    predict_cmd = commands.add_parser(
        "predict", help="top-k classes of image files (multi-label: the labels above the model's threshold)"
    )
    predict_cmd.add_argument("model", help=MODEL_HELP)
    predict_cmd.add_argument("images", nargs="+", help="image files or folders of them")
    predict_cmd.add_argument(
        "--top-k", type=positive_int, default=5, help="how many classes to show per image (not for multi-label models)"
    )
    predict_cmd.add_argument("--class-names", help="a text file with one class name per line (e.g. for 21k models)")
    predict_cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict_cmd.add_argument(
        "--out",
        default="segmentations",
        help="a segmenter's folder for each image's <name>.mask.png (class indices, palette) and <name>.overlay.png",
    )
    predict_cmd.add_argument(
        "--short-side",
        type=positive_int,
        help="a segmenter resizes each image's short side to this many pixels first (default: its training size; "
        "a larger image is run in windows of that size), e.g. the image's own size where objects are at the scale "
        "the model was trained at",
    )
    _add_inference_flags(predict_cmd, precision="auto", auto="the fastest here of fp32, bf16 and int8")
    _add_max_pixels(predict_cmd)
    predict_cmd.set_defaults(func=_predict)


def _add_inspect_command(commands: Commands) -> None:
    inspect_cmd = commands.add_parser(
        "inspect",
        help="the paper's analysis figures (attention, distances, position embeddings, filters) and explanations "
        "(rollout, relevance, Grad-CAM) with their measured faithfulness",
    )
    inspect_cmd.add_argument("model", help=MODEL_HELP)
    inspect_cmd.add_argument("images", nargs="*", help="image files or folders (default: held-out images of --data)")
    inspect_cmd.add_argument("--out", required=True, help="folder for the PNGs and index.html")
    inspect_cmd.add_argument("--force", action="store_true", help="write into an --out folder that holds other files")
    inspect_cmd.add_argument("--data", help="dataset to take images from (default: the run's own data)")
    inspect_cmd.add_argument("--count", type=positive_int, default=8, help="images to show attention and rollout for")
    inspect_cmd.add_argument(
        "--distance-images", type=positive_int, default=256, help="images of --data to average attention distances over"
    )
    inspect_cmd.add_argument(
        "--explain",
        nargs="*",
        default=list(METHODS),
        choices=METHODS,
        help="explanation methods to draw and score (default: all; none with a bare --explain)",
    )
    inspect_cmd.add_argument(
        "--class", dest="explain_class", help="class to explain, by name or index (default: each image's prediction)"
    )
    inspect_cmd.add_argument(
        "--no-faithfulness",
        dest="faithfulness",
        action="store_false",
        help="skip the deletion/insertion scores (faithfulness.json)",
    )
    inspect_cmd.set_defaults(func=_inspect)


def _add_shards_command(commands: Commands) -> None:
    shards_cmd = commands.add_parser(
        "shards", help="write a dataset as tar shards (WebDataset layout) to stream data larger than memory"
    )
    shards_cmd.add_argument("data", help="an ImageFolder folder, a path,label CSV, digits or mnist")
    shards_cmd.add_argument("out", help="folder for train-*.tar, val-*.tar and shards.json")
    shards_cmd.add_argument("--shard-size", type=positive_int, default=10_000, help="images per shard")
    shards_cmd.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="channels the images are read as")
    shards_cmd.add_argument(
        "--val-fraction", type=float, default=0.1, help="held-out fraction when the data has no val/ split"
    )
    shards_cmd.add_argument("--force", action="store_true", help="write into an OUT folder that holds other files")
    shards_cmd.set_defaults(func=_shards)


def _add_convert_commands(commands: Commands) -> None:
    """The commands that write a model in another format: convert and export."""
    convert_cmd = commands.add_parser("convert", help="write a model in another library's format")
    convert_cmd.add_argument("src", help=MODEL_HELP + ", or a bare weight file with --architecture")
    convert_cmd.add_argument("dst", help="output folder (vitkit, hf) or .safetensors file (timm)")
    convert_cmd.add_argument("--to", required=True, choices=TARGETS, help="target format")
    convert_cmd.add_argument("--architecture", metavar="NAME", help="architecture of a bare weight file, e.g. S/16")
    convert_cmd.add_argument("--force", action="store_true", help="replace what DST already holds")
    convert_cmd.set_defaults(func=_convert)

    export_cmd = commands.add_parser("export", help="export a model for deployment (ONNX or torch.export)")
    export_cmd.add_argument("model", help=MODEL_HELP)
    export_cmd.add_argument("out", help="the file to write (.onnx or .pt2)")
    export_cmd.add_argument(
        "--format",
        default="onnx",
        choices=EXPORT_FORMATS,
        help="onnx (onnxruntime, TensorRT, ...) or pt2 (torch.export)",
    )
    export_cmd.add_argument("--dynamic", action="store_true", help="leave the image size free (the batch always is)")
    export_cmd.add_argument("--int8", action="store_true", help="int8 linear layers (ONNX only; see vitkit.quantize)")
    export_cmd.add_argument("--force", action="store_true", help="replace an existing file")
    export_cmd.set_defaults(func=_export)


def _add_serve_command(commands: Commands) -> None:
    serve_cmd = commands.add_parser(
        "serve", help="serve a model: a JSON API with dynamic batching, and a web page that explains each answer"
    )
    serve_cmd.add_argument("model", help=MODEL_HELP + ", or a bare weight file with --architecture")
    serve_cmd.add_argument("--architecture", metavar="NAME", help="architecture of a bare weight file, e.g. S/16")
    serve_cmd.add_argument("--class-names", help="a text file with one class name per line (e.g. for 21k models)")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every one; warns)")
    serve_cmd.add_argument("--port", type=port, default=8000, help="TCP port")
    serve_cmd.add_argument(
        "--max-batch", type=positive_int, default=16, help="images per forward pass at most (1: no batching)"
    )
    serve_cmd.add_argument(
        "--max-wait-ms",
        type=nonnegative_float,
        default=5.0,
        help="how long a request may wait for others to share its batch",
    )
    serve_cmd.add_argument("--api-key", help="require Authorization: Bearer KEY on /v1/* (or set VITKIT_API_KEY)")
    serve_cmd.add_argument(
        "--max-upload-mb", type=positive_float, default=10.0, help="larger uploads are refused (413)"
    )
    serve_cmd.add_argument(
        "--allowed-hosts",
        nargs="+",
        default=[],
        metavar="NAME",
        help="without --api-key, host names the server answers to besides IP addresses and localhost "
        "(against DNS rebinding); * for any",
    )
    serve_cmd.add_argument(
        "--max-connections",
        type=positive_int,
        help="open connections at most (default 512, fewer under a low ulimit -n)",
    )
    serve_cmd.add_argument(
        "--header-timeout-s", type=positive_float, default=10.0, help="a request header must arrive within this (408)"
    )
    serve_cmd.add_argument(
        "--keep-alive-s", type=positive_float, default=5.0, help="how long an idle connection stays open"
    )
    _add_max_pixels(serve_cmd)
    _add_inference_flags(
        serve_cmd, precision="auto", auto="the fastest here of fp32, bf16 and int8 (explanations stay float)"
    )
    serve_cmd.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs")
    serve_cmd.add_argument("--log-level", default="info", choices=("warning", "info", "debug"), help="uvicorn's log")
    serve_cmd.set_defaults(func=_serve)


def _add_benchmark_command(commands: Commands) -> None:
    bench = commands.add_parser("benchmark", help="img/s, FLOP rate and memory next to timm and transformers")
    bench.add_argument("--model", default="S/16", help="model name or alias")
    bench.add_argument("--batch", type=positive_int, default=32, help="images per step")
    bench.add_argument("--img-size", type=positive_int, nargs="+", default=[224], help="one or more resolutions")
    bench.add_argument("--task", default="inference", choices=("inference", "train"), help="what a step is")
    bench.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES, help="who to time")
    bench.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32", "bf16-autocast"],
        choices=PRECISIONS,
        help="numeric formats (int8: vitkit only, see vitkit.quantize)",
    )
    bench.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    bench.add_argument("--grad-checkpointing", action="store_true", help="also train vitkit with it (task train)")
    bench.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per variant (median reported)")
    bench.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="peak memory probes")
    bench.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run")
    bench.add_argument("--json", help="also write the results to this JSON file")
    bench.add_argument(
        "--explain", action="store_true", help="say which kernels and precision vitkit chooses here, and why; no timing"
    )
    bench.set_defaults(func=_benchmark)


def _add_models_command(commands: Commands) -> None:
    models = commands.add_parser(
        "models", help="list the model names and sizes, or (--pretrained) the pretrained weights"
    )
    models.add_argument("pattern", nargs="?", help="shell-style filter, e.g. '*base*'")
    models.add_argument("--aliases", action="store_true", help="list short names such as B/16 instead")
    models.add_argument(
        "--pretrained", action="store_true", help="list the pretrained weights vitkit knows by name, with their facts"
    )
    models.set_defaults(func=_models)


def _add_allow_nonfinite(commands: Commands) -> None:
    """--allow-nonfinite, last on every command that reads weights."""
    for name, command in commands.choices.items():
        if name in ("shards", "benchmark", "models"):  # the commands that read no weights
            continue
        command.add_argument(
            "--allow-nonfinite",
            action="store_true",
            help=f"load weights that hold NaN or Inf, with a warning (else an error; or set {ALLOW_NONFINITE_ENV}=1)",
        )


def _format_warning(message: Warning | str, *args: Any, **kwargs: Any) -> str:
    return f"vitkit: warning: {message}\n"


class _LogLine(logging.Formatter):
    """``vitkit: warning: message``, as the CLI's other lines read."""

    def __init__(self) -> None:
        super().__init__("vitkit: %(level)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.level = record.levelname.lower()
        return super().format(record)


@contextlib.contextmanager
def _log_lines() -> Iterator[None]:
    """While a command runs, vitkit's log notes go to stderr as one line each, ``vitkit: warning:
    ...``; the library itself only logs (to ``logging.getLogger("vitkit")``), leaving the format to
    whoever runs it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogLine())
    log = logging.getLogger("vitkit")
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _raised_by_vitkit(error: BaseException) -> bool:
    """Whether vitkit's own code raised ``error`` (its messages say what was wrong and what to
    do), rather than a library it calls."""
    frame, traceback = None, error.__traceback__
    while traceback is not None:
        frame, traceback = traceback.tb_frame, traceback.tb_next
    return frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(VITKIT_PACKAGE)


#: the commands that share the cores with other vitkit processes (vitkit.cores); benchmark times alone
SHARES_CORES = frozenset({"train", "pretrain", "eval", "fewshot", "linear-probe", "predict", "inspect", "serve"})


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning  # a user-facing line, not the code location
    with _log_lines():
        return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; errors written for people become one line and an exit status."""
    if getattr(args, "allow_nonfinite", False):  # read by open_weights wherever the command loads weights
        os.environ[ALLOW_NONFINITE_ENV] = "1"
    try:
        if args.command in SHARES_CORES:
            share_cores()
        args.func(args)
    except (ValueError, TrainingDiverged) as error:
        if not _raised_by_vitkit(error):
            raise  # from a library under vitkit, unforeseen: a bug to report, with its traceback
        print(f"vitkit: error: {error}", file=sys.stderr)  # written for people: no traceback
        return 2
    except DistributedFailure as error:
        print(f"vitkit: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine's side: a read-only or full disk, a file that vanished
        print(f"vitkit: error: {error}", file=sys.stderr)
        return 1
    except TrainingInterrupted as error:
        print(f"vitkit: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("vitkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
