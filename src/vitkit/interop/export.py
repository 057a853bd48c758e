"""Export for deployment: ONNX (through ``torch.onnx.export(dynamo=True)``) and ``torch.export``
programs (``.pt2``). Both trace the model with ``torch.export``.

The batch is always free. By default the graph is traced at the model's image size, so the
position embeddings are baked in for that grid. ``dynamic=True`` leaves the image size free too:
the graph then resamples the position embeddings for the grid of each input (the same bicubic,
antialiased resampling as ``set_image_size``; in ONNX a ``Resize`` with ``antialias``, opset 18).
A segmenter (:class:`~vitkit.models.segmenter.Segmenter`) is always exported so: its input and its
logits ``(B, K, H, W)`` take any height and width that are multiples of the patch size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..models import VisionTransformer
from ..models.segmenter import Segmenter

logger = logging.getLogger(__name__)

# The largest grid side a dynamic export accepts (e.g. 128 × 16 = 2048 px for /16 models).
MAX_GRID_SIDE = 128
EXPORT_FORMATS = ("onnx", "pt2")
#: protobuf's 2 GiB message limit: larger ONNX models keep their weights in a .data file beside
ONNX_ONE_FILE_LIMIT = 2**31 - 2**24


@contextmanager
def _traceable(
    model: VisionTransformer | Segmenter, dynamic: bool
) -> Iterator[tuple[tuple[torch.Tensor], tuple[dict[int, Any]]]]:
    """Put ``model`` in eval mode (and, if ``dynamic`` or a segmenter, accepting any size) and yield
    the example input and ``dynamic_shapes`` for ``torch.export``; restore the model afterwards."""
    vit = model.backbone if isinstance(model, Segmenter) else model
    dynamic = dynamic or isinstance(model, Segmenter)
    config = vit.config
    if dynamic and config.pos_embed == "relative":
        raise ValueError(
            "this model's relative position embeddings are tied to its token count, so its image size cannot be "
            "left free; export without --dynamic"
        )
    # batch 2: torch.export would take a batch of 1 for a constant
    example = torch.zeros(2, config.in_chans, *config.img_size)
    sizes: dict[int, Any] = {0: torch.export.Dim("batch")}
    if dynamic:
        # Sizes are multiples of the stride by construction, so no divisibility check is traced.
        rows = torch.export.Dim("rows", min=1, max=MAX_GRID_SIDE)
        cols = torch.export.Dim("cols", min=1, max=MAX_GRID_SIDE)
        sizes.update({2: config.stride * rows, 3: config.stride * cols})
    was_training = model.training
    model.eval()
    # The exported graph must accept every size, whatever the model was created with.
    vit.config = config.replace(dynamic_img_size=True) if dynamic else config
    try:
        yield (example,), (sizes,)  # by position: the models name their input differently
    finally:
        vit.config = config
        model.train(was_training)


def export_onnx(model: VisionTransformer | Segmenter, path: str | Path, *, dynamic: bool = False) -> Path:
    """Write ``model`` as ONNX with input ``images`` (B, C, H, W) in [-1, 1] and output ``logits``
    (a segmenter's: (B, K, H, W)).

    Any batch, at the model's image size unless ``dynamic``, which frees the image size too (any
    multiple of the patch size; pad or resize other sizes first).
    Needs the ``onnx`` and ``onnxscript`` packages (``pip install 'vitkit[onnx]'``).
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise ValueError("ONNX export needs the onnx and onnxscript packages: pip install 'vitkit[onnx]'") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    one_file = weight_bytes < ONNX_ONE_FILE_LIMIT
    if not one_file:
        logger.warning(
            f"the weights ({weight_bytes / 2**30:.1f} GiB) exceed protobuf's 2 GiB limit: they go to "
            f"{path.name}.data beside {path.name}; keep the two files together"
        )
    with _traceable(model, dynamic) as (args, dynamic_shapes):
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=True,
            external_data=not one_file,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    return path


def export_program(model: VisionTransformer | Segmenter, path: str | Path, *, dynamic: bool = False) -> Path:
    """Write ``model`` as a ``torch.export`` program (``.pt2``): load it with
    ``torch.export.load(path).module()``, in Python without vitkit, or compile it ahead of time
    (AOTInductor). Input and sizes as in :func:`export_onnx`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _traceable(model, dynamic) as (args, dynamic_shapes):
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path))
    return path


def check_export_path(path: str | Path, format: str, *, overwrite: bool = False) -> Path:
    """``path`` as a destination for a ``format`` export (an int8 model is ``onnx``): its suffix
    must be the format's, and an existing file is left alone unless ``overwrite``."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    if path.suffix.lower() != f".{format}":
        raise ValueError(f"a {format} export is written as one .{format} file; got {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the file to write, e.g. {path / f'model.{format}'}")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another file or pass --force to replace it")
    return path


def export_model(
    model: VisionTransformer | Segmenter,
    path: str | Path,
    *,
    format: str = "onnx",
    dynamic: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export ``model`` to ``path`` in ``format`` (``onnx`` or ``pt2``); an existing file is left
    alone unless ``overwrite``."""
    check_export_path(path, format, overwrite=overwrite)
    writer = export_onnx if format == "onnx" else export_program
    return writer(model, path, dynamic=dynamic)
