"""vitkit serve: throughput and latency with dynamic batching on vs off, N concurrent clients.

Serves a ViT-S/16 (``--arch``; random weights, 1,000 classes, 224 px) with ``vitkit serve`` in its own
process, once with ``--max-batch 16`` and once with ``--max-batch 1`` (one image per forward
pass), alternating ``--rounds`` times; with ``--int8`` also ``--max-batch 16 --int8`` (int8 linear
layers on ONNX Runtime). Each client is a thread with a keep-alive HTTP connection
that posts a 224×224 JPEG to /v1/predict again and again; the clients run on the same machine as
the server, as loopback clients do. Prints a table and writes benchmarks/results/serve.json.

``--hostile`` measures the server under hostile clients instead, with ``ulimit -n 1024`` and its
address space capped at ``--memory-cap-gb`` (so that a bug cannot take the machine down), and
writes benchmarks/results/serve_hostile.json with three figures:

- its peak RSS (VmHWM) while eight 100-megapixel PNGs (solid colour, ~100 KB each) and a
  1×100000 PNG are uploaded at once, then eight 49-megapixel ones (just under the default
  ``--max-pixels``, so decoded), with the answers' statuses;
- the latency of ``/health`` while 1,100 connections that sent half a request header are open;
- plain-predict p50/p99 while ``/v1/predict/batch?explain=relevance`` requests of 64 images run
  (and p50 with the server otherwise idle, for reference).

    python benchmarks/serve.py [--arch S/16] [--clients 1 4 16] [--seconds 20] [--rounds 2] [--int8]
    python benchmarks/serve.py --hostile [--arch S/16] [--seconds 30]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitkit
from vitkit.benchmark import save_for_host
from vitkit.decisions import set_up_inference
from vitkit.device import autocast
from vitkit.machine import host_record


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(
    model: Path, port: int, max_batch: int, max_wait_ms: float, int8: bool, limits: Callable[[], None] | None = None
) -> subprocess.Popen:
    command = [sys.executable, "-m", "vitkit.cli.main", "serve", str(model), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
    command += ["--int8"] if int8 else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=limits)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/ready")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server did not become ready:\n{process.stdout.read()}")


def _served_precision(port: int) -> str:
    """The precision the server at ``port`` answers in (its ``/v1/model``): what its auto chose."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/model")
    return json.loads(connection.getresponse().read())["precision"]


def _load(port: int, image: bytes, clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads post ``image`` for ``seconds`` (after 3 s of warm-up); latencies in ms."""
    latencies: list[float] = []
    lock, errors = threading.Lock(), []
    start_at = time.monotonic() + 3.0
    stop_at = start_at + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while (now := time.monotonic()) < stop_at:
            connection.request("POST", "/v1/predict?top_k=5", body=image, headers={"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                errors.append(response.status)
            if now >= start_at:
                with lock:
                    latencies.append(1000 * (time.monotonic() - now))
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {sorted(set(errors))}")
    ordered = sorted(latencies)
    return {
        "images_per_second": len(ordered) / seconds,
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "requests": len(ordered),
    }


def _model_alone(arch: str, max_batch: int) -> dict[str, float]:
    """img/s of the model itself at batch 1 and ``max_batch`` (interleaved, best of 3), as
    ``vitkit serve``'s auto runs it (the same cached choices): what batching can gain at most."""
    cpu = torch.device("cpu")
    inference = set_up_inference(
        vitkit.create_model(arch).eval(), precision="auto", batch=max_batch, img_size=224, device=cpu, int8=True
    )
    model, precision = inference.model, inference.precision
    images = torch.randn(max_batch, 3, 224, 224)

    def rate(batch: int) -> float:
        with torch.inference_mode(), autocast(cpu, precision):
            start = time.perf_counter()
            for first in range(0, max_batch, batch):
                model(images[first : first + batch])
            return max_batch / (time.perf_counter() - start)

    rate(1), rate(max_batch)
    rates = [(rate(1), rate(max_batch)) for _ in range(3)]
    return {"precision": precision, "batch 1": max(r[0] for r in rates), f"batch {max_batch}": max(r[1] for r in rates)}


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 200).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _post(port: int, path: str, body: bytes, kind: str, timeout: float = 600) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": kind})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "vitkit-bench"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{i}.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + image
        + b"\r\n"
        for i, image in enumerate(images)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _health_ms(port: int, timeout: float = 30) -> float | str:
    start = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("GET", "/health")
        status = connection.getresponse().status
        connection.close()
    except OSError as error:
        return f"failed after {time.monotonic() - start:.1f} s: {error!r}"
    return 1000 * (time.monotonic() - start) if status == 200 else f"HTTP {status}"


def _hostile_uploads(port: int, pid: int, side: int) -> dict:
    """Peak RSS while 8 ``side``×``side`` PNGs and a 1×100000 PNG are posted at once."""
    big, thin = _png(side, side), _png(1, 100_000)
    before = _status_kb(pid)["VmRSS"]
    samples, done = [], threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(_status_kb(pid)["VmRSS"])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(9) as pool:
        answers = list(pool.map(lambda body: _post(port, "/v1/predict", body, "image/png"), [big] * 8 + [thin]))
    done.set()
    sampler.join()
    return {
        "uploads": f"8 × {side}×{side} PNG ({side * side / 1e6:g} megapixels) + 1 × 1×100000 PNG, at once",
        "upload_bytes": {"big": len(big), "1x100000": len(thin)},
        "statuses": [status for status, _ in answers],
        "errors": sorted({json.loads(body).get("error", "")[:160] for status, body in answers if status != 200}),
        "rss_before_mb": before / 1024,
        "rss_peak_sampled_mb": max(samples, default=before) / 1024,
        "vm_hwm_mb": _status_kb(pid)["VmHWM"] / 1024,
    }


def _idle_sockets(port: int, count: int) -> dict:
    """/health latency while ``count`` connections that sent half a header are open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))
    idle = [_health_ms(port) for _ in range(5)]
    sockets, refused = [], 0
    for _ in range(count):
        try:
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0")
            sockets.append(connection)
        except OSError:
            refused += 1
    time.sleep(0.5)
    under = [_health_ms(port) for _ in range(20)]
    for connection in sockets:
        connection.close()
    timings = [t for t in under if isinstance(t, float)]
    return {
        "half_header_sockets": count,
        "sockets_the_client_could_not_open": refused,
        "health_ms_idle_median": statistics.median(t for t in idle if isinstance(t, float)),
        "health_ms_median": statistics.median(timings) if timings else None,
        "health_ms_max": max(timings) if timings else None,
        "health_failures": [t for t in under if not isinstance(t, float)],
    }


def _mixed_load(port: int, seconds: float) -> dict:
    """Plain-predict latencies while explanation batches of 64 images run in two other clients."""
    image = _jpeg(0)
    idle = []
    for _ in range(10):
        start = time.monotonic()
        _post(port, "/v1/predict", image, "image/jpeg")
        idle.append(1000 * (time.monotonic() - start))
    body, kind = _multipart([_jpeg(seed) for seed in range(64)])
    stop_at = time.monotonic() + seconds
    explained, failures = [0], []

    def explainer() -> None:
        while time.monotonic() < stop_at:
            status, _ = _post(port, "/v1/predict/batch?explain=relevance", body, kind)
            explained[0] += 64 if status == 200 else 0

    explainers = [threading.Thread(target=explainer) for _ in range(2)]
    for thread in explainers:
        thread.start()
    time.sleep(2.0)  # the explanation batches are under way
    latencies = []
    while time.monotonic() < stop_at:
        start = time.monotonic()
        status, _ = _post(port, "/v1/predict", image, "image/jpeg")
        latencies.append(1000 * (time.monotonic() - start))
        if status != 200:
            failures.append(status)
    for thread in explainers:
        thread.join()
    ordered = sorted(latencies)
    return {
        "explanation_clients": 2,
        "images_per_explanation_request": 64,
        "seconds": seconds,
        "explained_images": explained[0],
        "plain_predicts": len(ordered),
        "plain_predict_failures": failures,
        "plain_p50_ms_idle": statistics.median(idle),
        "plain_p50_ms": statistics.median(ordered),
        "plain_p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "plain_max_ms": ordered[-1],
    }


def hostile(args: argparse.Namespace, folder: Path) -> None:
    """The three figures of ``--hostile`` (see the module's docstring)."""
    cap = int(args.memory_cap_gb * 2**30)

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    port = _free_port()
    server = _start(folder, port, args.max_batch, args.max_wait_ms, False, limits)
    try:
        results = {
            # past the default --max-pixels (refused from the header), then just under it (decoded)
            "uploads_over_limit": _hostile_uploads(port, server.pid, 10_000),
            "uploads_under_limit": _hostile_uploads(port, server.pid, 7_000),
            "idle_sockets": _idle_sockets(port, 1100),
            "mixed_load": _mixed_load(port, args.seconds),
        }
        time.sleep(1.0)
        alive = _health_ms(port)
    finally:
        server.terminate()
        log = server.communicate(timeout=60)[0]
    results["server"] = {
        "alive_after": isinstance(alive, float),
        "log_lines": len(log.splitlines()),
        "log_tail": log.splitlines()[-5:],
        "open_file_limit": 1024,
        "address_space_cap_gb": args.memory_cap_gb,
    }
    print(json.dumps(results, indent=2))
    out = Path(args.out if args.out != "benchmarks/results/serve.json" else "benchmarks/results/serve_hostile.json")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "clients", "rounds", "int8")}
    save_for_host(out, host_record(), {"settings": settings, **results})
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per setting")
    parser.add_argument("--rounds", type=int, default=2, help="on/off alternations; the median is reported")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--arch", default="S/16", help="the architecture served (random weights, 224 px)")
    parser.add_argument("--int8", action="store_true", help="also serve the int8 model, batching on")
    parser.add_argument("--out", default="benchmarks/results/serve.json")
    parser.add_argument("--hostile", action="store_true", help="hostile uploads, idle sockets, explanation load")
    parser.add_argument("--memory-cap-gb", type=float, default=8.0, help="--hostile: the server's address space")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitkit-serve-bench-") as scratch:  # the model, gone after
        folder = Path(scratch) / "model"
        vitkit.save_model(folder, vitkit.create_model(args.arch).eval(), model_name=f"{args.arch} (random weights)")
        if args.hostile:
            hostile(args, folder)
        else:
            normal(args, folder)


def normal(args: argparse.Namespace, folder: Path) -> None:
    """Batching on against off (and int8), for each number of clients; see the module docstring."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    image = buffer.getvalue()

    modes = {"batching on": (args.max_batch, False), "batching off": (1, False)}
    if args.int8:
        modes["int8, batching on"] = (args.max_batch, True)
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for mode, (max_batch, int8) in modes.items():
            port = _free_port()
            server = _start(folder, port, max_batch, args.max_wait_ms, int8)
            try:
                precision = _served_precision(port)
                for clients in args.clients:
                    measured = _load(port, image, clients, args.seconds)
                    runs.setdefault((mode, clients), []).append({**measured, "precision": precision})
            finally:
                server.terminate()
                server.wait(timeout=60)

    rows = []
    for (mode, clients), measured in runs.items():
        best = {key: statistics.median(m[key] for m in measured) for key in measured[0] if key != "precision"}
        precision = "/".join(sorted({m["precision"] for m in measured}))  # what the server chose, each round
        rows.append({"mode": mode, "clients": clients, "precision": precision, **best})
    print(f"{args.arch} at 224 px, {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'mode':17s} {'precision':9s} {'clients':>7s} {'img/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs off':>7s}")
    for row in sorted(rows, key=lambda r: (r["clients"], r["mode"])):
        off = next(r for r in rows if r["clients"] == row["clients"] and r["mode"] == "batching off")
        ratio = row["images_per_second"] / off["images_per_second"]
        row["throughput_vs_off"] = ratio
        print(
            f"{row['mode']:17s} {row['precision']:9s} {row['clients']:7d} {row['images_per_second']:7.1f} "
            f"{row['p50_ms']:8.0f} {row['p99_ms']:8.0f} {ratio:6.2f}×"
        )
    alone = _model_alone(args.arch, args.max_batch)
    print(
        f"the model alone ({alone['precision']}): "
        + ", ".join(f"{k} {v:.1f} img/s" for k, v in alone.items() if k != "precision")
    )
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    save_for_host(Path(args.out), host_record(), {"settings": settings, "rows": rows, "model_alone": alone})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
