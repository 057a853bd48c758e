"""``inspect_model``: every §4.5 figure for one model, its explanations with their measured
faithfulness, as PNGs, ``faithfulness.json`` and a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..data.images import load_image
from ..data.load import load_data
from ..fileio import atomic_write, check_out_folder
from ..interop.sources import LoadedModel
from ..models import VisionTransformer
from ..predict import expand_image_paths
from . import compute, plots
from .explain import METHODS, explanation_maps, predicted_classes
from .faithfulness import Faithfulness, faithfulness, random_maps

logger = logging.getLogger(__name__)

PAGE_NAME = "index.html"
FAITHFULNESS_NAME = "faithfulness.json"
# Images per chunk when averaging attention distances: bounds memory for big models.
DISTANCE_CHUNK = 32


@dataclass
class InspectReport:
    """What :func:`inspect_model` wrote: figure files with captions, and what did not apply."""

    out_dir: Path
    #: (title, PNG path, caption)
    figures: list[tuple[str, Path, str]] = field(default_factory=list)
    #: (title, reason) for each figure the model has no use for
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: mean attention distance per (layer, head) in pixels, when computed
    attention_distance: Tensor | None = None
    #: deletion and insertion AUC of each explanation method and of a random order
    faithfulness: dict[str, Faithfulness] = field(default_factory=dict)

    @property
    def page(self) -> Path:
        return self.out_dir / PAGE_NAME


def inspection_images(
    loaded: LoadedModel, *, paths: Sequence[str | Path] = (), data: str | None = None, count: int = 8
) -> Tensor:
    """Preprocessed images ``(B, C, H, W)`` for :func:`inspect_model`: the image files (or
    folders of them) in ``paths``, else the first ``count`` held-out images of ``data`` (a
    built-in dataset name, folder or CSV). Unreadable files are skipped with a warning naming
    them; none readable is an error."""
    if count < 1:
        raise ValueError(f"count must be at least 1 image, got {count}")
    model, preprocess, _ = loaded
    if paths:
        files = expand_image_paths(paths)
        if not files:
            raise ValueError(f"no image files found in {', '.join(map(str, paths))}")
        images = []
        for path in files:
            try:
                images.append(preprocess(load_image(path, model.config.in_chans, min_side=preprocess.min_side)))
            except OSError as error:
                logger.warning(f"skipping {error}")
            if len(images) == count:
                break
        if not images:
            raise ValueError(f"none of the {len(files)} image file(s) could be read")
        return torch.stack(images)
    if data is None:
        raise ValueError("give image files to inspect, or a dataset to take them from (--data)")
    held_out = load_data(data, in_chans=model.config.in_chans).val
    return torch.stack([preprocess(held_out[index][0]) for index in range(min(count, len(held_out)))])


def _save(figure: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    return path


def inspect_model(
    model: VisionTransformer,
    images: Tensor,
    out_dir: str | Path,
    *,
    distance_images: Tensor | None = None,
    max_head_figures: int = 2,
    class_names: Sequence[str] | None = None,
    target: int | None = None,
    methods: Sequence[str] = METHODS,
    measure_faithfulness: bool = True,
    multi_label: bool = False,
    force: bool = False,
) -> InspectReport:
    """Write the paper's inspection figures for ``model`` into ``out_dir``.

    Args:
        model: any vitkit model (put in eval mode for this call).
        images: preprocessed images ``(B, C, H, W)`` for the per-head maps (the first
            ``max_head_figures``) and the rollout (all of them; a handful reads best).
        out_dir: created if needed; PNGs and ``index.html`` are written there.
        distance_images: the batch the mean attention distance is averaged over (a few hundred
            images is plenty); ``images`` when omitted.
        class_names: the model's class names, to caption the explanations.
        target: the class the class-specific explanations explain; each image's predicted class
            when omitted.
        methods: the explanation methods to draw (see :mod:`vitkit.analysis.explain`).
        measure_faithfulness: score every method (and a random order) with the deletion and
            insertion curves on ``images``, into ``faithfulness.json``.
        multi_label: the model gives a sigmoid per class (the curves follow it) instead of a softmax.
    """
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            "vitkit inspect draws a ViT's attention, position embeddings and patch filters, and this model is a "
            "ResNet, which has none of them; explain its answers with Grad-CAM (vitkit serve, or "
            'vitkit.analysis.explanation_maps(model, images, "gradcam"))'
        )
    out_dir = Path(out_dir)
    check_out_folder(out_dir, own=PAGE_NAME, force=force)  # a folder of earlier figures is rewritten
    out_dir.mkdir(parents=True, exist_ok=True)
    report = InspectReport(out_dir)
    was_training = model.training
    model.eval()
    try:
        _attention_figures(model, images, report, max_head_figures)
        if methods and model.config.num_classes:
            _explain(model, images, report, class_names, target, methods, measure_faithfulness, multi_label)
        _distance_figure(model, images if distance_images is None else distance_images, report)
    finally:
        model.train(was_training)
    _weight_figures(model, report)
    _write_page(report, model)
    return report


def _grid(model: VisionTransformer, images: Tensor) -> tuple[int, int]:
    return images.shape[-2] // model.config.stride, images.shape[-1] // model.config.stride


def _attention_figures(model: VisionTransformer, images: Tensor, report: InspectReport, count: int) -> None:
    """Every layer's and head's attention map for the first ``count`` images."""
    attentions = compute.attention_maps(model, images)
    for index in range(min(count, images.shape[0])):
        figure = plots.attention_heads_figure(
            images[index],
            [weights[index] for weights in attentions],
            num_prefix_tokens=model.config.num_prefix_tokens,
            grid=_grid(model, images),
            pool=model.config.pool,
        )
        report.figures.append(
            (
                f"Attention maps, image {index + 1}",
                _save(figure, report.out_dir / f"attention_heads_{index + 1}.png"),
                "Each layer (row) and head (column): the attention weights of the output token over "
                "the patches (each panel scaled to its own maximum), computed on the explicit attention path "
                "for this call only.",
            )
        )


def _distance_figure(model: VisionTransformer, images: Tensor, report: InspectReport) -> None:
    """The mean attention distance per head, averaged over ``images``."""
    distances = _mean_attention_distance(model, images)
    report.attention_distance = distances
    figure = plots.attention_distance_figure(distances, grid=_grid(model, images), patch_pixels=model.config.stride)
    report.figures.append(
        (
            "Mean attention distance (Fig. 7 right, Fig. 11)",
            _save(figure, report.out_dir / "attention_distance.png"),
            "Per head, the attention-weighted distance between query and key patches, averaged over "
            f"{images.shape[0]} images. Heads near the line attend globally; low dots are local heads.",
        )
    )


def _weight_figures(model: VisionTransformer, report: InspectReport) -> None:
    """The figures read off the weights alone, where the model has what they show."""
    for title, name, make, caption in (
        (
            "Position-embedding similarity (Fig. 7 centre, Fig. 10)",
            "pos_embed_similarity.png",
            lambda: plots.pos_embed_similarity_figure(compute.pos_embed_similarity(model)),
            "Cosine similarity of each patch's position embedding with those of all other patches, "
            "one small map per patch, laid out like the patch grid.",
        ),
        (
            "Embedding filters (Fig. 7 left)",
            "embedding_filters.png",
            lambda: plots.embedding_filters_figure(*compute.embedding_filters(model)),
            "The top principal components of the linear patch-embedding filters, with the share of the "
            "filters' variance each explains.",
        ),
    ):
        try:
            report.figures.append((title, _save(make(), report.out_dir / name), caption))
        except compute.NotApplicable as reason:
            report.skipped.append((title, str(reason)))


def _explain(
    model: VisionTransformer,
    images: Tensor,
    report: InspectReport,
    class_names: Sequence[str] | None,
    target: int | None,
    methods: Sequence[str],
    measure: bool,
    multi_label: bool,
) -> None:
    classes = predicted_classes(model, images) if target is None else torch.full((images.shape[0],), target)
    maps = {method: explanation_maps(model, images, method, classes).cpu() for method in methods}
    names = class_names or [str(i) for i in range(model.config.num_classes)]
    captions = [f"explains {names[c]}" for c in classes.tolist()]
    report.figures.append(
        (
            "Explanations",
            _save(plots.explanations_figure(images, maps, captions), report.out_dir / "explanations.png"),
            "rollout: attention rollout (Abnar & Zuidema 2020; Fig. 6), what the output token draws on, for any "
            "class. relevance: gradient-weighted attention relevance (Chefer et al. 2021) and gradcam: Grad-CAM on "
            "the tokens the last block reads, both for the class named above each image"
            + (" (the predicted one)." if target is None else "."),
        )
    )
    if not measure:
        return
    maps["random"] = random_maps(images.shape[0], tuple(maps[methods[0]].shape[-2:]))  # the control
    report.faithfulness = {
        method: faithfulness(model, images, values, classes, multi_label=multi_label) for method, values in maps.items()
    }
    text = json.dumps({method: score.to_dict() for method, score in report.faithfulness.items()}, indent=2) + "\n"
    atomic_write(report.out_dir / FAITHFULNESS_NAME, lambda tmp: tmp.write_text(text))


def _mean_attention_distance(model: VisionTransformer, images: Tensor) -> Tensor:
    config = model.config
    grid = (images.shape[-2] // config.stride, images.shape[-1] // config.stride)
    total = None
    for start in range(0, images.shape[0], DISTANCE_CHUNK):
        chunk = images[start : start + DISTANCE_CHUNK]
        distances = compute.mean_attention_distance(
            compute.attention_maps(model, chunk),
            num_prefix_tokens=config.num_prefix_tokens,
            grid=grid,
            patch_pixels=config.stride,
        )
        weighted = distances * chunk.shape[0]
        total = weighted if total is None else total + weighted
    return total / images.shape[0]


def _write_page(report: InspectReport, model: VisionTransformer) -> None:
    """One HTML file with the PNGs inlined, so it can be mailed or attached as it is."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>vitkit inspect</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}figcaption{color:#555}"
        "td,th{padding:.2em 1em;text-align:right}td:first-child{text-align:left}</style>",
        "<h1>What the model learned</h1>",
        f"<p>{html.escape(_describe(model))}</p>",
    ]
    for title, path, caption in report.figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f"<figure><h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}' alt='{html.escape(title)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    if report.faithfulness:
        parts.append(
            "<h2>Faithfulness of the explanations</h2><p>Patches removed (deletion) or revealed (insertion) "
            "most relevant first, tracking the explained class's probability; areas under the curves, mean over "
            "the images above. Deletion: lower is better; insertion: higher is better.</p>"
            "<table><tr><th>method</th><th>deletion AUC</th><th>insertion AUC</th></tr>"
        )
        parts += [
            f"<tr><td>{html.escape(method)}</td><td>{score.deletion_auc:.3f}</td><td>{score.insertion_auc:.3f}</td></tr>"
            for method, score in report.faithfulness.items()
        ]
        parts.append("</table>")
    if report.skipped:
        parts.append("<h2>Not applicable to this model</h2><ul>")
        parts += [f"<li><b>{html.escape(title)}</b>: {html.escape(reason)}</li>" for title, reason in report.skipped]
        parts.append("</ul>")
    text = "\n".join(parts) + "\n"
    atomic_write(report.page, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _describe(model: VisionTransformer) -> str:
    config = model.config
    return (
        f"{config.depth} layers, width {config.embed_dim}, {config.num_heads} heads, "
        f"{config.img_size[0]}×{config.img_size[1]} px in {config.stride}-px patches "
        f"({config.grid[0]}×{config.grid[1]}), "
        f"{config.in_chans} channel(s), position embeddings {config.pos_embed!r}, pooling {config.pool!r}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters."
    )
