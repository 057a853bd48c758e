"""Speed choices made by measuring this machine, not written into the code.

What is fastest differs between machines (an AVX2-only CPU emulates bf16; AMX makes it fast; the
fused attention backward is slow on some CPUs and the fastest kernel on GPUs), so vitkit decides
each of these by a short timed trial the first time it meets a situation, and remembers:

- ``attention``: the kernel (:data:`~vitkit.models.vit.ATTENTION_KERNELS`) for a device, dtype,
  training or inference, and shape class; env ``VITKIT_ATTENTION`` (``sdpa``, ``explicit``);
- ``optimizer``: PyTorch's ``fused`` or ``foreach`` implementation; env ``VITKIT_OPTIMIZER``;
- ``precision``: what ``--precision auto`` means for inference (``fp32``, ``bf16``, or, where
  the caller can run it, ``int8`` by ONNX Runtime); env ``VITKIT_PRECISION``;
- ``linear``: whether a ViT's encoder runs its linear layers ``packed`` for inference
  (:func:`~vitkit.packed.pack_linears`, on a CPU with oneDNN) or ``plain``; env ``VITKIT_LINEAR``.

Choices are cached in ``$VITKIT_HOME/decisions.json`` under the machine's fingerprint (CPU model
and flags or GPU name, torch and vitkit versions, threads), so another CPU or an upgrade measures again.
An unreadable cache is measured over, with a warning. A setting that is not ``auto`` (a flag, a
config file) wins over all of this, and the environment variable over the cache. The choice
changes speed, not results beyond rounding; a training run records its choices, and a resumed
run keeps them, so it stays bit-identical.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from .fileio import atomic_write, cache_dir
from .interop.int8 import kept_file, quantize
from .machine import cpu_flags, cpu_model
from .models import VisionTransformer, ViTConfig
from .models.segmenter import Segmenter
from .models.vit import ATTENTION_KERNELS, attention
from .packed import pack_linears, packing_runs
from .version import __version__

logger = logging.getLogger(__name__)

OPTIMIZER_KERNELS = ("foreach", "fused")
INFERENCE_PRECISIONS = ("fp32", "bf16", "int8")
LINEAR_KERNELS = ("plain", "packed")
ENVIRONMENT = {
    "attention": "VITKIT_ATTENTION",
    "optimizer": "VITKIT_OPTIMIZER",
    "precision": "VITKIT_PRECISION",
    "linear": "VITKIT_LINEAR",
}
#: seconds one trial may take (each candidate runs at least ``_MIN_ROUNDS`` times, interleaved)
TRIAL_SECONDS = 0.5
_MIN_ROUNDS = 3
#: a candidate whose first call is this many times the fastest first call is not timed further
_DROP_RATIO = 3.0


@dataclass(frozen=True)
class Decision:
    """One choice: ``what`` (attention, optimizer, precision, linear) for ``situation``, and ``how``
    it was made (measured, cached, set by an environment variable, the only choice, or set).
    ``seconds`` holds the median time of one trial call per candidate, when it was measured."""

    what: str
    situation: str
    choice: str
    how: str
    seconds: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        timing = ", ".join(f"{name} {_duration(s)}" for name, s in sorted(self.seconds.items(), key=lambda x: x[1]))
        return f"{self.what} for {self.situation}: {self.choice} ({self.how}{': ' + timing if timing else ''})"


def _duration(seconds: float) -> str:
    return f"{1000 * seconds:.3g} ms" if seconds < 1 else f"{seconds:.2f} s"


def machine_fingerprint(device: torch.device) -> str:
    """What a measurement holds for: the device's model (and a CPU's flags), torch, vitkit (whose
    candidates change between versions), threads."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        flags = sorted(cpu_flags())
        name = f"{cpu_model()} {platform.machine()} flags:{_digest(' '.join(flags))}"
    return f"{name} | torch {torch.__version__} | vitkit {__version__} | {torch.get_num_threads()} threads"


def _digest(text: str) -> str:
    """A short, stable digest (not Python's per-process ``hash``)."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path() -> Path:
    return cache_dir() / "decisions.json"


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning(f"ignoring {path}: {error}; measuring again (delete the file to stop this warning)")
        return {}
    if not isinstance(cache, dict) or not all(isinstance(v, dict) for v in cache.values()):
        logger.warning(f"ignoring {path}: not vitkit's decision cache; measuring again")
        return {}
    return cache


def _remember(device: torch.device, key: str, decision: Decision) -> None:
    path = cache_path()
    cache = _read_cache(path)  # again, just before writing: keep what other processes added
    cache.setdefault(machine_fingerprint(device), {})[key] = {"choice": decision.choice, "seconds": decision.seconds}
    try:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(cache, indent=1, sort_keys=True)))
    except OSError as error:  # a read-only home still runs, measuring each time
        logger.warning(f"could not cache a measured choice in {path}: {error}")


def forced_choice(what: str, choices: Iterable[str]) -> str | None:
    """The choice the environment variable for ``what`` forces, if set; one outside ``choices`` is an error."""
    variable = ENVIRONMENT[what]
    forced = os.environ.get(variable, "").strip()
    if forced and not _is_choice(forced, choices):
        raise ValueError(f"{variable}={forced!r} is not a choice here; use one of {', '.join(choices)}, or unset it")
    return forced or None


def _is_choice(value: str, choices: Iterable[str]) -> bool:
    kernel, _, chunk = value.partition(":")  # where explicit is a choice, so is explicit:Q (Q queries at a time)
    return value in choices or (kernel == "explicit" and kernel in choices and chunk.isdigit() and int(chunk) > 0)


def decide(
    what: str,
    situation: str,
    choices: Sequence[str],
    trials: Callable[[], Mapping[str, Callable[[], object]]],
    device: torch.device,
) -> Decision:
    """The fastest of ``choices`` for ``situation``: from the environment variable for ``what`` if
    set, else from the cache, else measured now and cached. ``trials()`` makes, only when measuring,
    a call per choice that does the work once; they are timed in interleaved rounds (median per
    choice), with the random number generators left as they were, so a run's randomness does not
    depend on whether a choice was measured."""
    forced = forced_choice(what, choices)
    if forced:
        return Decision(what, situation, forced, f"set by {ENVIRONMENT[what]}")
    if len(choices) == 1:
        return Decision(what, situation, choices[0], "the only choice here")
    key = f"{what}: {situation}"
    cached = _read_cache(cache_path()).get(machine_fingerprint(device), {}).get(key)
    if isinstance(cached, dict) and cached.get("choice") in choices:
        seconds = cached.get("seconds") if isinstance(cached.get("seconds"), dict) else {}
        return Decision(what, situation, cached["choice"], "cached", seconds)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        choice, seconds = _fastest(trials(), device)
    decision = Decision(what, situation, choice, "measured", seconds)
    _remember(device, key, decision)
    return decision


def _fastest(candidates: Mapping[str, Callable[[], object]], device: torch.device) -> tuple[str, dict[str, float]]:
    # The first call of each (which allocates and picks kernels) is timed too: one far slower than
    # the best (emulated bf16 can be 10×) is out without more calls, and keeps that time.
    first = {name: _timed(run, device) for name, run in candidates.items()}
    times = {name: [] for name, seconds in first.items() if seconds <= _DROP_RATIO * min(first.values())}
    start = time.perf_counter()
    rounds = 0
    while rounds < _MIN_ROUNDS or (time.perf_counter() - start < TRIAL_SECONDS and rounds < 50):
        for name in times:
            times[name].append(_timed(candidates[name], device))
        rounds += 1
    seconds = {name: statistics.median(times[name]) if name in times else first[name] for name in candidates}
    return min(seconds, key=seconds.__getitem__), seconds


def _timed(run: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    began = time.perf_counter()
    run()
    _synchronize(device)
    return time.perf_counter() - began


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bucket(n: int) -> int:
    """The power of two at or above ``n``: a shape class, so a close size reuses a measurement."""
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def decide_attention(
    *, batch: int, heads: int, tokens: int, head_dim: int, dtype: torch.dtype, device: torch.device, training: bool
) -> Decision:
    """The attention kernel for this shape class, as ``"sdpa"``, ``"explicit"`` or, for
    inference at many tokens, ``"explicit:Q"`` (Q queries at a time; see :class:`~vitkit.models.vit.Attention`)."""
    mode = "training" if training else "inference"
    dtype_name = str(dtype).removeprefix("torch.")
    shape = f"~{_bucket(tokens)} tokens, heads of {head_dim}, ~{_bucket(batch * heads)} maps"
    situation = f"{device.type} {dtype_name} {mode}, {shape}"
    default_chunk = max(64, 65536 // tokens)
    chunks = []
    if not training and tokens > default_chunk:  # only then does the explicit kernel take chunks
        chunks = [chunk for chunk in (default_chunk // 2, default_chunk * 2) if chunk < tokens]
    choices = [*ATTENTION_KERNELS, *(f"explicit:{chunk}" for chunk in chunks)]

    def trials() -> dict[str, Callable[[], object]]:
        # Laid out as in the model: views of one qkv projection, and a gradient like a layer's (a
        # broadcast one, as from .sum(), sends the explicit backward down a 4× slower path). At
        # most 2²⁶ attention weights (256 MB in fp32): fewer images, the same per-image shapes.
        images = max(1, min(batch, (1 << 26) // (heads * tokens * tokens)))
        qkv = torch.randn(images, tokens, 3, heads, head_dim, device=device, dtype=dtype, requires_grad=training)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        gradient = torch.randn_like(q) if training else None
        kernels = [(kernel, 0) for kernel in ATTENTION_KERNELS] + [("explicit", chunk) for chunk in chunks]
        return {
            name: _attention_trial(q, k, v, *kernel, gradient) for name, kernel in zip(choices, kernels, strict=True)
        }

    return decide("attention", situation, choices, trials, device)


def _attention_trial(q, k, v, kernel: str, chunk: int, gradient: torch.Tensor | None) -> Callable[[], object]:
    def run() -> None:
        if gradient is not None:
            attention(q, k, v, None, 0.0, kernel, chunk).backward(gradient)
        else:
            with torch.no_grad():
                attention(q, k, v, None, 0.0, kernel, chunk)

    return run


def parse_attention_choice(choice: str) -> tuple[str, int]:
    """``"explicit:113"`` → ``("explicit", 113)``; ``"sdpa"`` → ``("sdpa", 0)``."""
    kernel, _, chunk = choice.partition(":")
    return kernel, int(chunk or 0)


def decide_optimizer(parameters: Iterable[nn.Parameter], optimizer: str, device: torch.device) -> Decision:
    """PyTorch's ``fused`` or ``foreach`` implementation of ``optimizer`` (adamw, adam, sgd),
    timed on copies of (up to 4M numbers of) ``parameters`` with random gradients."""
    sample, count = [], 0
    for parameter in parameters:
        if count >= 4_000_000:
            break
        sample.append(parameter)
        count += parameter.numel()
    situation = f"{device.type} {optimizer}, ~{_bucket(count):,} numbers in ~{_bucket(len(sample))} tensors"
    build = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]

    def trials() -> dict[str, Callable[[], object]]:
        copies = [p.detach().clone().requires_grad_() for p in sample]
        for copy in copies:
            copy.grad = torch.randn_like(copy)
        return {kernel: build(copies, lr=1e-6, **{kernel: True}).step for kernel in OPTIMIZER_KERNELS}

    return decide("optimizer", situation, OPTIMIZER_KERNELS, trials, device)


def decide_precision(
    model: nn.Module, *, batch: int, img_size: int, device: torch.device, int8: bool = False
) -> Decision:
    """What ``--precision auto`` means for inference with ``model``: the fastest of fp32 and bf16
    autocast, each with its own best attention kernel, and, when ``int8`` and
    :func:`int8_runs` ``model``, its int8 model (:func:`~vitkit.interop.quantize`, which keeps it
    for the next time), timed on a batch of up to 8 images."""
    config = model.config
    if isinstance(model, VisionTransformer):
        shape = f"{config.depth} blocks of {config.embed_dim}, ~{_bucket(tokens_of(config, img_size))} tokens"
    else:
        shape = f"ResNet-v2 {'+'.join(map(str, config.layers))} of {config.num_features}, ~{_bucket(img_size)} px"
    candidates = INFERENCE_PRECISIONS if int8 and int8_runs(model, device) else INFERENCE_PRECISIONS[:2]
    situation = f"{device.type} inference, {shape}, among {'/'.join(candidates)}"
    images = torch.randn(min(batch, 8), config.in_chans, img_size, img_size, device=device)
    quantizing = []

    def trials() -> dict[str, Callable[[], object]]:
        return {precision: _inference_trial(model, images, precision, quantizing) for precision in candidates}

    decision = decide("precision", situation, candidates, trials, device)
    if quantizing and decision.choice == "int8":  # what int8 saves per image, against what quantizing costs
        floats = [seconds for name, seconds in decision.seconds.items() if name != "int8"]
        saved = (min(floats) - decision.seconds["int8"]) / len(images)
        costs = {"quantizing": quantizing[0], "saved per image": saved}
        _remember(device, f"int8 costs: {situation}", Decision("int8 costs", situation, "int8", "measured", costs))
    return decision


def int8_runs(model: nn.Module, device: torch.device) -> bool:
    """Whether ``model`` has an int8 form here: a ViT, on the CPU, with ONNX Runtime installed."""
    return device.type == "cpu" and isinstance(model, VisionTransformer) and find_spec("onnxruntime") is not None


def _inference_trial(
    model: nn.Module, images: torch.Tensor, precision: str, quantizing: list[float]
) -> Callable[[], object]:
    if precision == "int8":
        kept = kept_file(model).is_file()
        began = time.perf_counter()
        quantized = quantize(model)
        if not kept:  # what quantizing costs, for weights not quantized before
            quantizing.append(time.perf_counter() - began)
        return functools.partial(quantized, images)
    dtype = dtype_of(precision)
    kernel = None
    if isinstance(model, VisionTransformer):  # as set_up_inference would run it at this precision
        kernel, linear = _decide_form(model, batch=len(images), img_size=images.shape[-1], dtype=dtype)
        model = pack_linears(model, dtype) if linear.choice == "packed" else model

    def run() -> None:
        if kernel is not None:  # the fp32 and bf16 trials share the model: each sets its own kernel
            model.set_attention_kernel(*parse_attention_choice(kernel.choice))
        with torch.no_grad(), torch.autocast(images.device.type, dtype=dtype, enabled=precision == "bf16"):
            model(images)

    return run


def tokens_of(config: ViTConfig, img_size: int, visible_fraction: float = 1.0) -> int:
    """The tokens a model of ``config`` attends over for square images of ``img_size`` pixels, of
    which the encoder sees ``visible_fraction`` of the patches (a masked autoencoder's 1 - mask ratio)."""
    return config.num_prefix_tokens + int((img_size // config.stride) ** 2 * visible_fraction)


def dtype_of(precision: str) -> torch.dtype:
    """The dtype matmuls run in at ``precision`` (``fp32``, ``bf16``, or a ``bf16-…`` variant)."""
    return torch.bfloat16 if precision.startswith("bf16") else torch.float32


def decide_attention_for(
    model: nn.Module, *, batch: int, img_size: int, dtype: torch.dtype, training: bool, tokens: int | None = None
) -> Decision:
    """:func:`decide_attention` for ``model``'s heads at ``img_size`` (or ``tokens``), on its device."""
    config = model.config
    return decide_attention(
        batch=batch,
        heads=config.num_heads,
        tokens=tokens or tokens_of(config, img_size),
        head_dim=config.embed_dim // config.num_heads,
        dtype=dtype,
        device=next(model.parameters()).device,
        training=training,
    )


def decide_linear(model: VisionTransformer, *, batch: int, img_size: int, dtype: torch.dtype) -> Decision:
    """Whether ``model``'s encoder runs its linear layers ``packed`` (:func:`~vitkit.packed.pack_linears`)
    or ``plain`` for inference at ``dtype``: timed on one of its blocks with up to 8 images."""
    config = model.config
    device = next(model.parameters()).device
    images, tokens = min(batch, 8), tokens_of(config, img_size)
    dtype_name = str(dtype).removeprefix("torch.")
    situation = f"{device.type} {dtype_name} inference, blocks of {config.embed_dim}, ~{_bucket(images * tokens)} rows"
    choices = LINEAR_KERNELS if packing_runs(device, dtype) else LINEAR_KERNELS[:1]

    def trials() -> dict[str, Callable[[], object]]:
        block = model.blocks[0]
        tokens_in = torch.randn(images, tokens, config.embed_dim, device=device)
        forms = {"plain": block, "packed": pack_linears(block, dtype)}
        return {name: _block_trial(forms[name], tokens_in, dtype) for name in choices}

    return decide("linear", situation, choices, trials, device)


def _block_trial(block: nn.Module, tokens: torch.Tensor, dtype: torch.dtype) -> Callable[[], object]:
    def run() -> None:
        with torch.no_grad(), torch.autocast(tokens.device.type, dtype=dtype, enabled=dtype == torch.bfloat16):
            block(tokens)

    return run


def _decide_form(
    model: VisionTransformer, *, batch: int, img_size: int, dtype: torch.dtype
) -> tuple[Decision, Decision]:
    """How ``model`` runs inference fastest at ``dtype``: its attention kernel (set on ``model``)
    and whether its linear layers are packed (left to the caller)."""
    kernel = decide_attention_for(model, batch=batch, img_size=img_size, dtype=dtype, training=False)
    model.set_attention_kernel(*parse_attention_choice(kernel.choice))
    return kernel, decide_linear(model, batch=batch, img_size=img_size, dtype=dtype)


@dataclass(frozen=True)
class Inference:
    """How to run inference fast here: ``model`` (the model given, its attention kernel set; a
    copy with its linear layers packed; or its int8 form), the ``precision`` to run it at, and
    the ``decisions`` behind them."""

    model: nn.Module
    precision: str
    decisions: list[Decision]


def set_up_inference(
    model: nn.Module,
    *,
    precision: str,
    batch: int,
    img_size: int,
    device: torch.device,
    int8: bool = False,
    images: int | None = None,
) -> Inference:
    """Make ``model`` (on ``device``, in eval mode; a classifier or a
    :class:`~vitkit.models.segmenter.Segmenter`, which its backbone decides for) run inference
    the fastest way this machine has. ``precision`` ``"auto"`` becomes fp32, bf16 or (when
    ``int8``) int8 by :func:`decide_precision`; a given one is kept. Knowing the job's ``images``,
    auto passes over int8 for weights not quantized yet when quantizing them would cost more than
    int8 saves on that many images (both measured by the trial). At int8 the model is
    :func:`~vitkit.interop.quantize`'d; else a ViT's attention kernel is :func:`decide_attention_for`
    that precision, and its linear layers are packed where :func:`decide_linear` says so (the
    model given is not changed by that: the inference model is a copy sharing its other weights)."""
    network = model.backbone if isinstance(model, Segmenter) else model
    int8 = int8 and network is model  # a segmenter has no int8 form
    decisions = []
    if precision == "auto":
        decisions.append(decide_precision(network, batch=batch, img_size=img_size, device=device, int8=int8))
        precision = decisions[-1].choice
        passed_over = _int8_passed_over(network, decisions[-1], images, device)
        if passed_over:
            decisions.append(passed_over)
            precision = passed_over.choice
    if precision == "int8":
        return Inference(quantize(network), precision, decisions)
    if isinstance(network, VisionTransformer):
        dtype = dtype_of(precision)
        decisions.extend(_decide_form(network, batch=batch, img_size=img_size, dtype=dtype))
        model = pack_linears(model, dtype) if decisions[-1].choice == "packed" else model
    return Inference(model, precision, decisions)


def _int8_passed_over(model: nn.Module, chosen: Decision, images: int | None, device: torch.device) -> Decision | None:
    """The fastest float precision instead of ``chosen``'s int8, when ``model``'s weights have no
    int8 form kept yet and quantizing them costs more than int8 saves on ``images``."""
    if chosen.choice != "int8" or chosen.how not in ("measured", "cached") or images is None:
        return None
    costs = _read_cache(cache_path()).get(machine_fingerprint(device), {}).get(f"int8 costs: {chosen.situation}")
    measured = costs.get("seconds") if isinstance(costs, dict) else None
    floats = {name: seconds for name, seconds in chosen.seconds.items() if name != "int8"}
    if not isinstance(measured, dict) or not floats or kept_file(model).is_file():
        return None
    quantizing, saved = measured.get("quantizing"), measured.get("saved per image")
    if not isinstance(quantizing, float) or not isinstance(saved, float) or images * saved >= quantizing:
        return None
    why = f"int8 would save ~{_duration(images * saved)} and quantizing takes ~{_duration(quantizing)}"
    return Decision("precision", f"{images} image(s), weights not quantized yet", min(floats, key=floats.get), why)
