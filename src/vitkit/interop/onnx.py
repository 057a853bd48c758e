"""Export to ONNX through ``torch.onnx.export(dynamo=True)`` (which goes through ``torch.export``).

The graph is traced at the model's image size, so the position embeddings are baked in for that
grid. ``dynamic_batch`` leaves the batch dimension free. Needs the ``onnx`` and ``onnxscript``
packages (``pip install vitkit[onnx]``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models import VisionTransformer


def export_onnx(model: VisionTransformer, path: str | Path, *, dynamic_batch: bool = False) -> Path:
    """Write ``model`` (in eval mode) as ONNX with input ``images`` (B, C, H, W) in [-1, 1] and
    output ``logits``; batch 1 unless ``dynamic_batch``."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
    except ImportError as error:
        raise ValueError("ONNX export needs the onnx and onnxscript packages: pip install 'vitkit[onnx]'") from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    example = torch.zeros(2 if dynamic_batch else 1, config.in_chans, *config.img_size)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    was_training = model.training
    model.eval()
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    finally:
        model.train(was_training)
    return path
