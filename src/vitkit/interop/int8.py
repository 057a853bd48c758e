"""int8 inference on CPUs: the model exported to ONNX, its linear layers quantized with ONNX
Runtime's dynamic quantization, and run by ONNX Runtime.

Why ONNX Runtime: on CPUs with AVX512-VNNI but without AMX its int8 matmuls (MLAS) outrun
PyTorch's bf16 ones (on a CPU with AMX, bf16 is faster), while PyTorch's own int8 kernels
(``torch._int_mm``, fbgemm's and oneDNN's dynamic linear) ran slower than its bf16 matmuls on the
machines vitkit is measured on (the manual's int8 page has the figures). Dynamic quantization
needs no calibration data: every weight matrix is stored as int8 with a scale per output channel,
and each matmul's input is quantized on the fly, per tensor.
Static quantization (activation scales calibrated on held-out images) was measured slower here,
so it is not offered. Attention's own products, LayerNorm, GELU and the softmax stay fp32.

Exporting and quantizing take seconds (9 s for S/16 on 2 cores), more than a short prediction
job gains, so each quantized model is kept under ``$VITKIT_HOME/int8/``, named by a digest of its
weights, configuration and the quantizer's settings and versions: the same weights quantize once
per machine (delete the folder to reclaim the space).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from ..fileio import atomic_write, cache_dir
from ..machine import cpu_has_int8_dot_product
from ..models import VisionTransformer, ViTConfig
from ..models.segmenter import Segmenter
from ..version import __version__
from .export import export_onnx

logger = logging.getLogger(__name__)


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as error:
        raise ValueError("int8 inference needs onnxruntime: pip install 'vitkit[onnx]'") from error
    return onnxruntime


class Int8Model(nn.Module):
    """A ViT whose linear layers compute in int8, run by ONNX Runtime on the CPU. Its forward is
    the float model's: images ``(B, C, H, W)`` in, fp32 logits ``(B, num_classes)`` out (on the
    images' device). It holds no torch parameters and cannot be trained or explained; keep the
    float model for that. :meth:`save` writes it as an ONNX file that ONNX Runtime runs alone."""

    def __init__(self, onnx_model: bytes, config: ViTConfig, *, threads: int | None = None) -> None:
        super().__init__()
        ort = _onnxruntime()
        self.config = config
        self.onnx_model = onnx_model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Off: with the batch free, ONNX Runtime's memory patterns doubled the memory held (474 vs
        # 234 MB for S/16 at batch 32) for no speed (measured).
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"images": images.detach().float().cpu().numpy()})
        return torch.from_numpy(logits).to(images.device)

    def save(self, path: str | Path) -> Path:
        """Write the int8 model as one ONNX file (input ``images``, output ``logits``, as
        :func:`vitkit.interop.export_onnx` writes the float model)."""
        path = Path(path)
        atomic_write(path, lambda tmp: tmp.write_bytes(self.onnx_model))
        return path


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """ONNX Runtime's quantizer advises shape-inference pre-processing on the root logger at every
    call; it made no difference to speed here (measured), so the advice is kept off the console."""

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize(model: VisionTransformer, *, dynamic: bool | None = None, reduce_range: bool | None = None) -> Int8Model:
    """``model`` with int8 linear layers (see the module docstring for what is quantized and how),
    for CPU inference; ``model`` itself is left as it was. Kept under ``$VITKIT_HOME/int8/``: the
    same weights and settings load from there the next time. Any batch; the image size is free when
    ``dynamic`` (by default: when the model itself takes any size, ``dynamic_img_size``), else
    fixed at the model's own.

    ``reduce_range`` quantizes weights to 7 bits, which a CPU without VNNI or AMX-INT8 needs: there
    the 8-bit products saturate and the logits go wrong (measured on an AVX2 AMD EPYC: errors of 64 %
    of the largest logit, 2.6 % with 7 bits). By default it follows this machine
    (:func:`vitkit.machine.cpu_has_int8_dot_product`); pass ``True`` for a file meant to run anywhere."""
    if not isinstance(model, VisionTransformer):
        what = "a segmenter" if isinstance(model, Segmenter) else "a ResNet"
        raise ValueError(f"int8 quantization is for ViT classifiers (their linear layers); run {what} in fp32 or bf16")
    dynamic = model.config.dynamic_img_size if dynamic is None else dynamic
    reduce_range = not cpu_has_int8_dot_product() if reduce_range is None else reduce_range
    weights = next(model.parameters())
    if weights.device.type != "cpu" or weights.dtype != torch.float32:
        model = copy.deepcopy(model).float().cpu()
    cached = kept_file(model, dynamic=dynamic, reduce_range=reduce_range)
    if cached.is_file():
        try:
            return Int8Model(cached.read_bytes(), model.config)
        except Exception as error:  # ONNX Runtime's own error classes (a truncated file, another version)
            logger.warning(f"ignoring {cached}: ONNX Runtime cannot load it ({error}); quantizing again")
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional, and slow to import: only to quantize

    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as folder, _without_preprocessing_advice():
        float_path, int8_path = Path(folder, "float.onnx"), Path(folder, "int8.onnx")
        export_onnx(model, float_path, dynamic=dynamic)
        # MatMul only: the patch embedding's ConvInteger is slow in ONNX Runtime, and the layer cheap.
        quantize_dynamic(
            float_path,
            int8_path,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            op_types_to_quantize=["MatMul"],
        )
        quantized = Int8Model(int8_path.read_bytes(), model.config)
    try:
        quantized.save(cached)
    except OSError as error:  # a read-only home still quantizes, each time
        logger.warning(f"could not keep the int8 model in {cached}: {error}")
    return quantized


def kept_file(model: VisionTransformer, *, dynamic: bool | None = None, reduce_range: bool | None = None) -> Path:
    """Where :func:`quantize` keeps ``model``'s int8 form (which exists once it has quantized it),
    named by a digest of the float model's configuration and weights, the settings, and the
    versions of the code that writes it."""
    dynamic = model.config.dynamic_img_size if dynamic is None else dynamic
    reduce_range = not cpu_has_int8_dot_product() if reduce_range is None else reduce_range
    digest = hashlib.sha256()
    versions = {"vitkit": __version__, "torch": torch.__version__, "onnxruntime": _onnxruntime().__version__}
    settings = {"dynamic": dynamic, "reduce_range": reduce_range, "config": model.config.to_dict(), **versions}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():  # as quantize exports them: fp32, on the CPU
        weights = (tensor.float() if tensor.is_floating_point() else tensor).detach().cpu()
        digest.update(f"{name} {tuple(weights.shape)} {weights.dtype}".encode())
        digest.update(weights.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return cache_dir() / "int8" / f"{digest.hexdigest()[:32]}.onnx"
