"""A smoke run of the benchmark harness (the real measurements live in benchmarks/)."""

import json

import pytest
import torch

from vitkit.benchmark import build_peer, count_gflop, inference_step, interleaved
from vitkit.cli.main import main


def test_benchmark_command_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["benchmark", "--model", "Ti/16", "--batch", "2", "--img-size", "32", "--reps", "2", "--task", "train"]
    args += ["--libraries", "vitkit", "timm", "--precisions", "fp32", "--grad-checkpointing", "--no-memory"]
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("| train | Ti/16 | 32 |") == 3  # vitkit, vitkit + checkpointing, timm
    rows = json.loads(out.read_text())
    assert {(r["library"], r["grad_checkpointing"]) for r in rows} == {
        ("vitkit", False),
        ("vitkit", True),
        ("timm", False),
    }
    assert all(len(r["seconds"]) == 2 and r["images_per_second"] > 0 and r["gflop_per_image"] > 0 for r in rows)


def test_the_three_libraries_build_the_same_computation():
    # Same architecture → the same FLOPs per image outside the fused attention kernel, which
    # FlopCounterMode does not count on CPU. vitkit's explicit kernel does attention in plain
    # matmuls: exactly two (N × N × head_dim) products per head and layer more.
    images = torch.randn(1, 3, 64, 64)
    counts = {
        library: count_gflop(inference_step(build_peer(library, "Ti/16", img_size=64), images, "fp32"))
        for library in ("vitkit", "timm", "transformers")
    }
    assert counts["timm"] == pytest.approx(counts["vitkit"], rel=1e-6)
    assert counts["transformers"] == pytest.approx(counts["vitkit"], rel=1e-6)
    model = build_peer("vitkit", "Ti/16", img_size=64)
    model.set_attention_kernel("explicit")
    explicit = count_gflop(inference_step(model, images, "fp32"))
    tokens, width, depth = 1 + 16, 192, 12
    assert (explicit - counts["vitkit"]) * 1e9 == pytest.approx(depth * 2 * (2 * tokens * tokens * width), rel=1e-6)


def test_interleaved_timing_alternates_the_variants():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    times = interleaved(steps, reps=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "b"] * 3 and [len(t) for t in times.values()] == [3, 3]
