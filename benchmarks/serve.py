"""vitkit serve: throughput and latency with dynamic batching on vs off, N concurrent clients.

Serves a ViT-S/16 (``--arch``; random weights, 1,000 classes, 224 px) with ``vitkit serve`` in its own
process, once with ``--max-batch 16`` and once with ``--max-batch 1`` (one image per forward
pass), alternating ``--rounds`` times; with ``--int8`` also ``--max-batch 16 --int8`` (int8 linear
layers on ONNX Runtime). Each client is a thread with a keep-alive HTTP connection
that posts a 224×224 JPEG to /v1/predict again and again; the clients run on the same machine as
the server, as loopback clients do. Prints a table and writes benchmarks/results/serve.json.

    python benchmarks/serve.py [--arch S/16] [--clients 1 4 16] [--seconds 20] [--rounds 2] [--int8]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitkit
from vitkit.train.device import resolve_precision


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(model: Path, port: int, max_batch: int, max_wait_ms: float, int8: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "vitkit.cli.main", "serve", str(model), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
    command += ["--int8"] if int8 else []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
    """img/s of the model itself at batch 1 and ``max_batch`` (interleaved, best of 3), under the
    precision ``vitkit serve`` picks: what batching can gain at most."""
    model = vitkit.create_model(arch).eval()
    precision = resolve_precision("auto", torch.device("cpu"))
    images = torch.randn(max_batch, 3, 224, 224)

    def rate(batch: int) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            start = time.perf_counter()
            for first in range(0, max_batch, batch):
                model(images[first : first + batch])
            return max_batch / (time.perf_counter() - start)

    rate(1), rate(max_batch)
    rates = [(rate(1), rate(max_batch)) for _ in range(3)]
    return {"precision": precision, "batch 1": max(r[0] for r in rates), f"batch {max_batch}": max(r[1] for r in rates)}


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
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="vitkit-serve-bench-")) / "model"
    vitkit.save_model(folder, vitkit.create_model(args.arch).eval(), model_name=f"{args.arch} (random weights)")
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
                for clients in args.clients:
                    runs.setdefault((mode, clients), []).append(_load(port, image, clients, args.seconds))
            finally:
                server.terminate()
                server.wait(timeout=60)

    rows = []
    for (mode, clients), measured in runs.items():
        best = {key: statistics.median(m[key] for m in measured) for key in measured[0]}
        rows.append({"mode": mode, "clients": clients, **best})
    print(f"{args.arch} at 224 px, {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'mode':17s} {'clients':>7s} {'img/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'vs off':>7s}")
    for row in sorted(rows, key=lambda r: (r["clients"], r["mode"])):
        off = next(r for r in rows if r["clients"] == row["clients"] and r["mode"] == "batching off")
        ratio = row["images_per_second"] / off["images_per_second"]
        row["throughput_vs_off"] = ratio
        print(
            f"{row['mode']:17s} {row['clients']:7d} {row['images_per_second']:7.1f} "
            f"{row['p50_ms']:8.0f} {row['p99_ms']:8.0f} {ratio:6.2f}×"
        )
    alone = _model_alone(args.arch, args.max_batch)
    print(
        f"the model alone ({alone['precision']}): "
        + ", ".join(f"{k} {v:.1f} img/s" for k, v in alone.items() if k != "precision")
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    Path(args.out).write_text(json.dumps({"settings": settings, "rows": rows, "model_alone": alone}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
