"""timm's own generic model tests with vitkit standing in: does vitkit's ViT keep timm's contract?

timm's ``tests/test_models.py`` (forward, backward, default configs, features, intermediates,
pruning, FX, TorchScript) is parametrized over model names and calls ``timm.create_model``. This
script runs it for vit_tiny_patch16_224 and vit_small_patch16_224 (with their pretrained tags)
through a small pytest plugin that swaps in ``vitkit.create_model`` for those names, then prints
one row per test. The two tests that download pretrained weights are left out (no network).

timm's tests ship in its source distribution, not its wheel:

    pip download timm==$(python -c "import timm; print(timm.__version__)") --no-deps --no-binary :all: -d /tmp/timm
    tar xzf /tmp/timm/timm-*.tar.gz -C /tmp/timm
    python benchmarks/timm_model_tests.py /tmp/timm/timm-*/tests
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from vitkit.benchmark import save_for_host
from vitkit.machine import host_record

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224")

PLUGIN = f"""
import os
import timm
import vitkit

calls = 0

def _vitkit_for_vits(model_name, *args, **kwargs):
    global calls
    if model_name.split(".")[0] in {MODELS!r}:
        calls += 1
        return vitkit.create_model(model_name, *args, **kwargs)
    return timm.create_model(model_name, *args, **kwargs)

def pytest_collection_modifyitems(session, config, items):
    for module in {{item.module for item in items if getattr(item, "module", None) is not None}}:
        module.create_model = _vitkit_for_vits  # the module the tests run in, however it was imported

def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["VITKIT_CALLS_FILE"], "w") as handle:
        handle.write(str(calls))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timm_tests", type=Path, help="the tests/ folder of timm's source distribution")
    args = parser.parse_args()
    if not (args.timm_tests / "test_models.py").is_file():
        sys.exit(f"{args.timm_tests} has no test_models.py: give the tests/ folder of timm's source distribution")
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "vitkit_for_vits.py").write_text(PLUGIN)
        report = Path(scratch) / "report.xml"
        selection = f"({' or '.join(MODELS)}) and not load_pretrained"
        command = [sys.executable, "-m", "pytest", "test_models.py", "-p", "vitkit_for_vits", "-p", "no:cacheprovider"]
        command += ["-q", "-k", selection, f"--junitxml={report}"]
        calls_file = Path(scratch) / "calls"
        env = {**os.environ, "PYTHONPATH": scratch, "VITKIT_CALLS_FILE": str(calls_file)}
        subprocess.run(command, cwd=args.timm_tests, env=env, check=False)
        rows = _outcomes(report)
        calls = int(calls_file.read_text()) if calls_file.is_file() else 0
    if not calls:
        sys.exit("vitkit.create_model was never called: the swap did not reach timm's tests")
    print("\n| timm test (vitkit.create_model standing in) | outcome |\n|---|---|")
    for name, outcome in rows:
        print(f"| {name} | {outcome} |")
    passed = sum(outcome == "passed" for _, outcome in rows)
    print(f"\n{passed} of {len(rows)} passed; vitkit.create_model built {calls} models for them")
    record = {"passed": passed, "rows": [{"test": name, "outcome": outcome} for name, outcome in rows]}
    save_for_host(Path(__file__).parent / "results" / "timm_model_tests.json", host_record(), record)


def _outcomes(report: Path) -> list[tuple[str, str]]:
    rows = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcome = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
        rows.append((case.get("name", "?"), outcome))
    return rows


if __name__ == "__main__":
    main()
