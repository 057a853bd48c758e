"""Seeded runs of a preset, timed: what the main-job benchmarks share."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from vitkit.benchmark import save_for_host
from vitkit.train import RunSummary, resolve_config, train


def seeds_argument(description: str) -> list[int]:
    """The ``--seeds`` of a benchmark's command line (default: seed 0 alone)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    return parser.parse_args().seeds


def preset_runs(preset: str, seeds: list[int]) -> Iterator[tuple[int, RunSummary, float, Path]]:
    """One run of ``preset`` per seed, each in a temporary folder that lives until the next run:
    (seed, summary, wall seconds, run folder)."""
    for seed in seeds:
        with tempfile.TemporaryDirectory() as out:
            config = resolve_config(preset=preset, overrides={"seed": seed, "out": out})
            start = time.perf_counter()
            summary = train(config, progress=False)
            yield seed, summary, time.perf_counter() - start, Path(out)


def save_runs(name: str, host: dict, rows: list[dict]) -> None:
    """Keep ``rows`` as this host kind's entry in ``results/<name>.json``."""
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    save_for_host(results / f"{name}.json", host, {"runs": rows})
