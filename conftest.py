"""The manual's examples are tests: every ```python and ```bash block in README.md and docs/ runs.

Each page runs in a fresh working directory of its own, top to bottom, in one pytest worker:
- ```python blocks share one namespace per page, with that directory as the current one;
- ```bash blocks run in bash (-e -o pipefail) with vitkit on the PATH; a block of plain `vitkit`
  commands (no pipes, redirections or variables) runs each through the console script's own entry
  point, `vitkit.cli.main.main`, in the test's process, which spares five seconds of imports each;
- a block whose title says "Not run by the tests: <why>" is passed over, and the page shows why;
- `<!-- invisible-code-block: python ... -->` comments prepare what a page assumes exists, through
  ``workspace`` (a trained run, image files, a folder of classes) and may set ``smaller``: text
  replacements for the next block, so that a test runs small data or models where the page shows
  big ones (each replacement must match, so none goes stale unnoticed);
- `vitkit serve ...` alone in a block starts in the background on the page's own free port (its
  `:8000` in later blocks is rewritten to it) and stops when the page ends.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

from vitkit.cli.main import main
from vitkit.train import TrainConfig, resolve_config, train

NOT_RUN = re.compile(r'title="Not run by the tests: [^"]+"')
DOCS_PORT = "8000"
TRAIN_SETTINGS = {field.name for field in dataclasses.fields(TrainConfig)}


class Workspace:
    """A page's working directory, and what its examples assume is there."""

    _runs: ClassVar[dict[str, Path]] = {}  # trained once per worker process, copied into each page that asks

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.servers: list[subprocess.Popen] = []
        self.env = dict(
            os.environ,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            VITKIT_HOME=str(root / ".vitkit"),
            HF_HUB_OFFLINE="1",
            MPLBACKEND="Agg",
            OMP_NUM_THREADS="1",
            # the kernels are fixed: the examples show results, not timings (no trial per page)
            VITKIT_ATTENTION="sdpa",
            VITKIT_OPTIMIZER="foreach",
            VITKIT_PRECISION="fp32",
            VITKIT_LINEAR="packed",
        )

    def run(self, path: str = "runs/digits", **settings: object) -> Path:
        """A small ViT trained for one epoch on scikit-learn's digits (8 px, 2-px patches);
        ``settings`` are training settings (``in_chans=3``) or model arguments (``pool="token"``)."""
        key = repr(sorted(settings.items()))
        if key not in self._runs:
            folder = tempfile.mkdtemp(prefix="vitkit-docs-run-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            out = Path(folder) / "run"
            overrides = {"data": "digits", "img_size": 8, "epochs": 1, "out": str(out), "precision": "fp32"}
            model_args = {"patch_size": 2, "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64}
            for name, value in settings.items():
                (overrides if name in TRAIN_SETTINGS else model_args)[name] = value
            train(resolve_config(preset="demo", overrides={**overrides, "model_args": model_args}), progress=False)
            self._runs[key] = out
        shutil.copytree(self._runs[key], self.root / path)
        return self.root / path

    def images(self, folder: str, count: int = 3, label: int | None = None) -> list[Path]:
        """``count`` digit images as 28-px PNG files (scikit-learn's digits, upscaled)."""
        digits = load_digits()
        chosen = [i for i, y in enumerate(digits.target) if label is None or y == label][:count]
        (self.root / folder).mkdir(parents=True, exist_ok=True)
        paths = []
        for n, i in enumerate(chosen):
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            path = self.root / folder / f"{n:04d}.png"
            Image.fromarray(pixels).resize((28, 28), Image.BILINEAR).save(path)
            paths.append(path)
        return paths

    def image(self, path: str, label: int = 7) -> Path:
        written = self.images(".docs-image", 1, label)[0]
        return written.rename(self.root / path)

    def folder(self, path: str, classes: int = 3, per_class: int = 12) -> Path:
        """An image folder in ImageFolder layout: ``path/<digit>/*.png``."""
        for label in range(classes):
            self.images(f"{path}/{label}", per_class, label)
        return self.root / path

    def multilabel_csv(self, path: str, count: int = 40) -> Path:
        """A multi-label ``path,label`` CSV of digit images, each labelled by two of four classes:
        even or odd, small (< 5) or large."""
        csv = self.root / path
        rows = ["path,label"]
        for label in range(10):
            for image in self.images(f"{csv.parent.relative_to(self.root)}/{label}", count // 10, label):
                parity, size = "even" if label % 2 == 0 else "odd", "small" if label < 5 else "large"
                rows.append(f'{image.relative_to(csv.parent)},"{parity};{size}"')
        csv.write_text("\n".join(rows) + "\n")
        return csv

    def start_server(self, command: str) -> None:
        if "--port" not in command:
            command += f" --port {self.port}"
        server = subprocess.Popen(command, shell=True, cwd=self.root, env=self.env, start_new_session=True)
        self.servers.append(server)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert server.poll() is None, f"{command!r} exited with {server.returncode}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{command!r} was not ready within 180 s")

    def close(self) -> None:
        for server in self.servers:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _source(example: Example) -> str:
    """The block's text, made small where the page asked (``smaller``), on the page's port."""
    workspace: Workspace = example.namespace["workspace"]
    source = str(example.parsed)
    for big, small in example.namespace.pop("smaller", {}).items():
        assert big in source, f"line {example.line}: {big!r} is not in the block any more"
        source = source.replace(big, small)
    return source.replace(f":{DOCS_PORT}", f":{workspace.port}").replace(
        f"--port {DOCS_PORT}", f"--port {workspace.port}"
    )


def run_python(example: Example) -> None:
    code = compile("\n" * (example.line) + _source(example), example.path, "exec")
    exec(code, example.namespace)


def run_bash(example: Example) -> None:
    workspace: Workspace = example.namespace["workspace"]
    source = _source(example)
    commands = _commands(source)
    if len(commands) == 1 and commands[0][:2] == ["vitkit", "serve"]:
        workspace.start_server(shlex.join(commands[0]))
    elif all(_plain_vitkit(command) for command in commands):
        for command in commands:
            _run_vitkit(example, workspace, command)
    else:
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", source],
            cwd=workspace.root,
            env=workspace.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, _failure(example, source, done.returncode, done.stdout, done.stderr)


def _commands(source: str) -> list[list[str]]:
    """The block's commands as words, one per line (continued lines joined), comments dropped;
    shell operators (``|``, ``>``, ``&&`` ...) come out as words of their own."""
    commands = []
    for line in source.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        if words := list(lexer):
            commands.append(words)
    return commands


def _plain_vitkit(words: list[str]) -> bool:
    """A ``vitkit`` command with no shell syntax: no operator, variable or substitution."""
    shell = any(set(word) <= set("();<>|&") or "$" in word or "`" in word for word in words)
    return words[0] == "vitkit" and not shell


def _run_vitkit(example: Example, workspace: Workspace, words: list[str]) -> None:
    """``vitkit ...`` through the console script's own entry point, in this process: the same
    code as a subprocess, without its five seconds of imports."""
    environment, threads = dict(os.environ), torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.environ.update({k: v for k, v in workspace.env.items() if k.startswith(("VITKIT_", "MPLBACKEND"))})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(words[1:])
    except SystemExit as exit:  # argparse's --help and --version, as the console script would
        status = exit.code or 0
    finally:
        os.environ.clear()
        os.environ.update(environment)
        torch.set_num_threads(threads)
    assert status == 0, _failure(example, shlex.join(words), status, out.getvalue(), err.getvalue())


def _failure(example: Example, source: str, status: int, stdout: str, stderr: str) -> str:
    return (
        f"{example.path}, line {example.line}: exit status {status}\n--- block ---\n{source}\n"
        f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-4000:]}"
    )


class SnippetParser(CodeBlockParser):
    """Blocks of one language, whatever else their info line says; those titled "Not run by the
    tests: <why>" are passed over."""

    def __call__(self, document):
        for region in self.lexers(document):
            language, _, attributes = region.lexemes["arguments"].partition(" ")
            if language != self.language:
                continue
            region.parsed = region.lexemes["source"]
            not_run = NOT_RUN.search(attributes)
            region.evaluator = _not_run if not_run else self._evaluator
            yield region


def _not_run(example: Example) -> None:
    """A block titled "Not run by the tests: <why>": the page shows why."""


def _set_up(namespace: dict) -> None:
    root = Path(tempfile.mkdtemp(prefix="vitkit-docs-"))
    namespace["workspace"] = Workspace(root)
    namespace["_previous_directory"] = os.getcwd()
    os.chdir(root)


def _tear_down(namespace: dict) -> None:
    os.chdir(namespace["_previous_directory"])
    workspace: Workspace = namespace["workspace"]
    workspace.close()
    shutil.rmtree(workspace.root, ignore_errors=True)


EXAMPLES = Sybil(
    parsers=[SnippetParser("python", run_python), SnippetParser("bash", run_bash)],
    patterns=["README.md", "docs/*.md"],
)


class Page(pytest.File):
    """A page of the manual: its examples are one test, as they build on each other."""

    def collect(self):
        yield PageExamples.from_parent(self, name="examples")


class PageExamples(pytest.Item):
    def runtest(self) -> None:
        document = EXAMPLES.parse(self.path)
        _set_up(document.namespace)
        try:
            for example in document.examples():
                example.evaluate()
        finally:
            _tear_down(document.namespace)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}: every example, top to bottom"


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Page | None:
    if EXAMPLES.should_parse(file_path):
        page = Page.from_parent(parent, path=file_path)
        page.add_marker(pytest.mark.slow)  # end to end: commands, servers, training runs
        return page
    return None
