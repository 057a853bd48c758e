"""Throughput, FLOP rate and memory of vitkit next to timm and transformers, measured in one process.

Every compared variant gets the same model, batch, resolution and precision. Variants are timed
interleaved (A B C A B C …) after a warm-up, so drifting clocks and neighbours hit all of them
alike, and the median of the repetitions is reported. The FLOP rate is set against the machine's
own matmul peak measured in the same run. Step memory (how far memory rises during a step above
the weights, optimizer state and inputs) comes from a fresh process per variant, since one
process's high-water mark says nothing about the next variant's: RSS on CPU, allocated on CUDA.
timm and transformers are needed only for their rows (``pip install timm transformers``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .decisions import (
    Decision,
    decide_attention_for,
    decide_optimizer,
    decide_precision,
    dtype_of,
    parse_attention_choice,
    set_up_inference,
)
from .device import autocast
from .fileio import atomic_write
from .interop.hf import hf_config_document
from .interop.int8 import quantize
from .models import Network, ResNetV2Config, VisionTransformer, ViTConfig, build_network, get_config
from .models.registry import resolve_name

logger = logging.getLogger(__name__)

LIBRARIES = ("vitkit", "timm", "transformers")
#: fp32; bf16 autocast over fp32 weights; bf16 weights and inputs without autocast; int8 linear
#: layers run by ONNX Runtime (:func:`vitkit.quantize`; vitkit only, inference only)
PRECISIONS = ("fp32", "bf16-autocast", "bf16-weights", "int8")


@dataclass
class Result:
    """One measured variant."""

    task: str  # "inference" or "train"
    library: str
    model: str
    precision: str
    batch: int
    img_size: int
    compiled: bool = False
    grad_checkpointing: bool = False
    images_per_second: float = 0.0  # median over repetitions
    seconds: list[float] = field(default_factory=list)  # every repetition, for the record
    gflop_per_image: float = 0.0
    achieved_gflops: float = 0.0
    peak_fraction: float | None = None  # of the matmul peak at this precision, measured in the same run
    # (int8: ONNX Runtime's int8 matmul, the kernel int8 rows run on)
    #: memory the steps take above the model, optimizer state and inputs (RSS on CPU, allocated on CUDA)
    peak_memory_mb: float | None = None


def build_peer(library: str, name: str, *, img_size: int, num_classes: int = 1000) -> nn.Module:
    """The same architecture from ``library`` with random weights, as a module ``images → logits``."""
    config = get_config(name, img_size=img_size, num_classes=num_classes)
    if library == "vitkit":
        return build_network(config)
    if library == "timm":
        import timm

        if isinstance(config, ViTConfig):
            return timm.create_model(resolve_name(name), pretrained=False, img_size=img_size, num_classes=num_classes)
        return timm_bit_resnet(config)
    if not isinstance(config, ViTConfig):
        raise ValueError(f"{name} is a ResNet: compare it with timm (transformers' ViT is a ViT)")
    if library == "transformers":
        import transformers

        document = hf_config_document(config, [str(i) for i in range(num_classes)])
        hf_config = transformers.ViTConfig(**document)
        hf_config._attn_implementation = "sdpa"
        return _LogitsOnly(transformers.ViTForImageClassification(hf_config))
    raise ValueError(f"unknown library {library!r}; choose from {', '.join(LIBRARIES)}")


def timm_bit_resnet(config: ResNetV2Config) -> nn.Module:
    """timm's BiT ResNet-v2 of ``config``'s shape (built from its parts: timm registers only BiT's
    own sizes, not vitkit's CPU-sized ones), with random weights."""
    from timm.layers import StdConv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers=config.layers,
        channels=tuple(config.root_width * 4 * 2**i for i in range(len(config.layers))),
        stem_chs=config.root_width,
        width_factor=config.width_factor,
        stem_type="fixed",
        conv_layer=functools.partial(StdConv2d, eps=1e-8),
        num_classes=config.num_classes,
        in_chans=config.in_chans,
    )


class _LogitsOnly(nn.Module):
    """transformers returns an output object; the timing loop wants the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def build_variant(library: str, name: str, *, img_size: int, precision: str) -> nn.Module:
    """:func:`build_peer`, quantized for the ``int8`` precision (vitkit only)."""
    model = build_peer(library, name, img_size=img_size)
    if precision != "int8":
        return model
    if library != "vitkit":
        raise ValueError(f"int8 is measured for vitkit only, not {library}")
    return quantize(model.eval())


def set_up_vitkit(
    model: Network, *, task: str, precision: str, batch: int, img_size: int
) -> tuple[nn.Module, list[Decision]]:
    """``model`` as vitkit's own commands run it on this machine (vitkit.decisions), and the
    decisions behind it: for inference :func:`~vitkit.decisions.set_up_inference`'s model at
    ``precision``'s dtype (a ViT's attention kernel set, its linear layers packed where that is
    faster); for training ``model`` with its attention kernel set, the optimiser kernel the last
    decision."""
    dtype = dtype_of(precision)
    if task != "train":
        device = next(model.parameters()).device
        float_precision = "bf16" if dtype == torch.bfloat16 else "fp32"
        inference = set_up_inference(model, precision=float_precision, batch=batch, img_size=img_size, device=device)
        return inference.model, inference.decisions
    decisions = []
    if isinstance(model, VisionTransformer):
        decisions.append(decide_attention_for(model, batch=batch, img_size=img_size, dtype=dtype, training=True))
        model.set_attention_kernel(*parse_attention_choice(decisions[0].choice))
    decisions.append(decide_optimizer(model.parameters(), "adamw", next(model.parameters()).device))
    return model, decisions


def explain_choices(
    *, model: str, batch: int, img_size: int, task: str, precisions: tuple[str, ...], device: str = "cpu"
) -> list[Decision]:
    """The choices vitkit makes on this machine for ``model`` (see vitkit.decisions): the
    attention kernel per precision, and the optimiser kernel (training) or what ``--precision
    auto`` means (inference). Measured now where the cache holds none."""
    target = torch.device(device)
    net = build_peer("vitkit", model, img_size=img_size).to(target)
    net.train(task == "train")
    decisions: dict[str, Decision] = {}
    for precision in precisions:
        if precision != "int8":
            for decision in set_up_vitkit(net, task=task, precision=precision, batch=batch, img_size=img_size)[1]:
                decisions[f"{decision.what}: {decision.situation}"] = decision
    if task == "inference":
        decision = decide_precision(net.eval(), batch=batch, img_size=img_size, device=target, int8=True)
        decisions["precision"] = decision
    return list(decisions.values())


def _step(
    library: str, model: nn.Module, images: torch.Tensor, *, task: str, precision: str, compiled: bool
) -> Callable[[], None]:
    """The timed step of ``library``'s ``model`` (``compiled`` by torch.compile): vitkit's with the
    kernels it chooses on this machine, the peers' as they come."""
    kernel = "foreach"
    if library == "vitkit" and precision != "int8":
        running, decisions = set_up_vitkit(
            model, task=task, precision=precision, batch=len(images), img_size=images.shape[-1]
        )
        kernel = decisions[-1].choice if task == "train" else kernel
        model = model if compiled else running  # a graph of oneDNN's packed-weight calls is inductor's to make
    if compiled:
        model = torch.compile(model)
    if task == "train":
        return train_step(model, images, precision, kernel)
    return inference_step(model, images, precision)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The benchmark's precisions in vitkit's terms: only bf16-autocast autocasts."""
    return autocast(device, "bf16" if precision == "bf16-autocast" else "fp32")


def inference_step(model: nn.Module, images: torch.Tensor, precision: str) -> Callable[[], None]:
    """A closure running one forward pass in eval mode without autograd."""
    model.eval()
    if precision == "bf16-weights":
        model.to(torch.bfloat16)
        images = images.to(torch.bfloat16)

    def step() -> None:
        with torch.inference_mode(), _autocast(precision, images.device):
            model(images)

    return step


def train_step(
    model: nn.Module, images: torch.Tensor, precision: str, optimizer_kernel: str = "foreach"
) -> Callable[[], None]:
    """A closure running forward, backward and an AdamW step (PyTorch's ``optimizer_kernel``
    implementation: foreach, or fused)."""
    if precision in ("bf16-weights", "int8"):
        raise ValueError(f"training with {precision} is not measured; use bf16-autocast")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **{optimizer_kernel: True})
    labels = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)

    def step() -> None:
        with _autocast(precision, images.device):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    steps: dict[str, Callable[[], None]], *, reps: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each step, timed A B C A B C … after ``warmup`` calls of each."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(reps):
        for key, step in steps.items():
            _synchronize(device)
            start = time.perf_counter()
            step()
            _synchronize(device)
            times[key].append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(dtype: torch.dtype, device: torch.device, size: int = 2048, reps: int = 5) -> float:
    """The machine's matmul rate at ``dtype``: the median of ``reps`` square ``size`` products."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    times = interleaved({"mm": lambda: a @ b}, reps=reps, warmup=2, device=device)["mm"]
    return 2 * size**3 / statistics.median(times) / 1e9


def int8_matmul_peak_gops(size: int = 2048, reps: int = 5) -> float:
    """ONNX Runtime's int8 matmul rate on this CPU (u8 × s8 → s32, the kernel of the int8 rows'
    linear layers): the median of ``reps`` square ``size`` products, in GOP/s."""
    import onnxruntime
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weights = helper.make_tensor(
        "b", TensorProto.INT8, (size, size), rng.integers(-127, 128, (size, size), dtype=np.int8).tobytes(), raw=True
    )
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "int8-matmul",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, (size, size))],
        [helper.make_tensor_value_info("c", TensorProto.INT32, (size, size))],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    times = interleaved({"mm": lambda: session.run(None, {"a": a})}, reps=reps, warmup=2, device=torch.device("cpu"))
    return 2 * size**3 / statistics.median(times["mm"]) / 1e9


def count_gflop(step: Callable[[], None]) -> float:
    """FLOPs of one call of ``step`` (forward, and backward if it has one), in GFLOP."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def _peak_memory_mb(spec: dict[str, Any]) -> float:
    """Peak memory of one variant, measured in a fresh Python process (see the module docstring)."""
    code = "import json, sys; from vitkit.benchmark import _probe; print(json.dumps(_probe(json.loads(sys.argv[1]))))"
    # Big blocks straight from mmap, so freed memory leaves the RSS at once instead of being kept
    # by malloc for reuse (which would hide the next step's peak).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed for {spec}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _probe(spec: dict[str, Any]) -> float:
    """Run by ``_peak_memory_mb`` in its own process: build; for training take one step (which
    creates the gradients and optimizer state), and for a compiled model one (which compiles it);
    then report how far memory rises above what the process held, in MB, during the next step, or
    for eager inference during the first two (so memory that a runtime keeps from step to step,
    like ONNX Runtime's arena, counts). On CPU a thread samples the RSS every millisecond."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    model = build_variant(spec["library"], spec["model"], img_size=spec["img_size"], precision=spec["precision"])
    model = model.to(device)
    if spec["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    images = torch.randn(spec["batch"], 3, spec["img_size"], spec["img_size"], device=device)
    step = _step(
        spec["library"], model, images, task=spec["task"], precision=spec["precision"], compiled=spec["compiled"]
    )
    # A compiled model compiles in its first step: never part of a step's memory.
    measured = 2 if spec["task"] == "inference" and not spec["compiled"] else 1
    if measured == 1:
        step()
    if device.type == "cuda":
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(measured):
            step()
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before = peak = _rss_mb()
    running = True

    def sample() -> None:
        nonlocal peak
        while running:
            peak = max(peak, _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(measured):
        step()
    running = False
    sampler.join()
    return peak - before


def run_benchmark(
    *,
    model: str = "S/16",
    batch: int = 32,
    img_size: int = 224,
    task: str = "inference",
    libraries: tuple[str, ...] = LIBRARIES,
    precisions: tuple[str, ...] = ("fp32", "bf16-autocast"),
    compile: tuple[str, ...] = (),
    grad_checkpointing: tuple[bool, ...] = (False,),
    reps: int = 5,
    warmup: int = 2,
    memory: bool = True,
    device: str = "cpu",
) -> list[Result]:
    """Measure ``task`` for every library × precision (× compiled for the libraries in
    ``compile``, × grad checkpointing for vitkit training), interleaved; see the module docstring
    for how. ``int8`` is measured for vitkit only, eager (ONNX Runtime compiles its own graph)."""
    for name, value in (("batch", batch), ("img_size", img_size), ("reps", reps)):
        if value < 1:  # reps=0 has no median to report
            raise ValueError(f"{name} must be at least 1, got {value}")
    target = torch.device(device)
    # only the precisions measured: an emulated bf16 peak (a CPU without AVX512-BF16 or AMX) takes minutes
    kinds = {precision.split("-")[0] for precision in precisions}
    peaks = {
        kind: matmul_peak_gflops(dtype, target)
        for kind, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        if kind in kinds
    }
    if "int8" in precisions and "vitkit" in libraries:
        peaks["int8"] = int8_matmul_peak_gops()
    make = train_step if task == "train" else inference_step
    # FLOPs are the architecture's, the same for every library and device (tested). They are
    # counted with vitkit's explicit attention, plain matmuls: FlopCounterMode does not count
    # PyTorch's fused CPU attention kernel.
    reference = build_peer("vitkit", model, img_size=img_size)
    if isinstance(reference, VisionTransformer):
        reference.set_attention_kernel("explicit")
    elif "transformers" in libraries:
        logger.warning(f"{model} is a ResNet: measured against timm's, not transformers' (its ViT classes)")
        libraries = tuple(library for library in libraries if library != "transformers")
    flops = count_gflop(make(reference, torch.randn(1, 3, img_size, img_size), "fp32"))
    steps: dict[str, Callable[[], None]] = {}
    results: dict[str, Result] = {}
    for library in libraries:
        for precision in precisions:
            if precision == "int8" and library != "vitkit":
                continue
            for checkpointing in grad_checkpointing if task == "train" and library == "vitkit" else (False,):
                for compiled in (False, True) if library in compile and precision != "int8" else (False,):
                    net = build_variant(library, model, img_size=img_size, precision=precision).to(target)
                    if checkpointing:
                        net.set_grad_checkpointing(True)
                    images = torch.randn(batch, 3, img_size, img_size, device=target)
                    key = f"{library}/{precision}/{compiled}/{checkpointing}"
                    steps[key] = _step(library, net, images, task=task, precision=precision, compiled=compiled)
                    results[key] = Result(
                        task, library, model, precision, batch, img_size, compiled, checkpointing, gflop_per_image=flops
                    )
    timings = interleaved(steps, reps=reps, warmup=warmup, device=target)
    for key, result in results.items():
        result.seconds = timings[key]
        result.images_per_second = batch / statistics.median(timings[key])
        result.achieved_gflops = result.gflop_per_image * result.images_per_second
        result.peak_fraction = result.achieved_gflops / peaks[result.precision.split("-")[0]]
        if memory:
            spec = {**asdict(result), "device": device, "threads": torch.get_num_threads()}
            result.peak_memory_mb = _peak_memory_mb(spec)
    return list(results.values())


def save_for_host(path: Path, host: dict[str, Any], record: dict[str, Any]) -> None:
    """Write ``record`` (measured on ``host``, a :func:`vitkit.machine.host_record`) into the JSON
    file ``path``, which keeps one entry per host kind (CPU model, flags, threads, GPU): this
    host's replaces its earlier one, the other hosts' stay. Atomic."""
    entries = json.loads(path.read_text()).get("hosts", []) if path.exists() else []
    kind = {key: host[key] for key in ("cpu", "cpu_flags", "threads", "gpu")}
    entries = [e for e in entries if {key: e["host"].get(key) for key in kind} != kind]
    document = {"hosts": [*entries, {"host": host, **record}]}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(document, indent=2) + "\n"))


def format_table(results: list[Result], *, baseline: str = "timm") -> str:
    """A Markdown table; ``× baseline`` compares each row with the baseline library's row of the
    same task, precision and compile setting (int8 rows: with its eager fp32 row)."""

    def key(r: Result) -> tuple:
        return (r.task, r.precision, r.compiled, r.img_size)

    reference = {key(r): r.images_per_second for r in results if r.library == baseline and not r.grad_checkpointing}
    lines = [
        "| task | model | px | library | precision | compiled | grad ckpt | img/s | × " + baseline + " | GFLOP/s "
        "| % of matmul peak | step memory MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = reference.get((r.task, "fp32", False, r.img_size) if r.precision == "int8" else key(r))
        ratio = f"{r.images_per_second / base:.2f}" if base else "—"
        memory = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "—"
        lines.append(
            f"| {r.task} | {r.model} | {r.img_size} | {r.library} | {r.precision} | {'yes' if r.compiled else 'no'} "
            f"| {'yes' if r.grad_checkpointing else 'no'} | {r.images_per_second:.1f} | {ratio} "
            f"| {r.achieved_gflops:.0f} | {100 * (r.peak_fraction or 0):.0f} % | {memory} |"
        )
    return "\n".join(lines)
