"""Shared test helpers. The first lines point huggingface_hub (and so timm and transformers) at a
loopback server and a throw-away cache before anything imports it: no test ever reaches the
real hub or touches the user's cache (see tests/loopback.py)."""

import atexit
import os
import shutil
import tempfile

from loopback import LoopbackServer, configure_hub_env

HUB = LoopbackServer()
HF_HOME = tempfile.mkdtemp(prefix="vitkit-tests-hf-home-")
atexit.register(shutil.rmtree, HF_HOME, ignore_errors=True)
configure_hub_env(os.environ, HUB.url, HF_HOME)
# vitkit's own cache (its measured kernel choices among it) is the tests' too, never the user's; and
# the kernels are fixed, so a result never depends on which one a timing picked (test_decisions
# measures, and other tests force each kernel where they check it); linear layers are packed, so
# every inference test runs through them
os.environ["VITKIT_HOME"] = tempfile.mkdtemp(prefix="vitkit-tests-home-")
atexit.register(shutil.rmtree, os.environ["VITKIT_HOME"], ignore_errors=True)
os.environ.update(VITKIT_ATTENTION="sdpa", VITKIT_OPTIMIZER="foreach", VITKIT_PRECISION="fp32", VITKIT_LINEAR="packed")

import contextlib
import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.train import resolve_config


@pytest.fixture(scope="session")
def hub():
    """The loopback Hub + Google bucket, serving what tests add to it."""
    with HUB:
        yield HUB


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_vit(**overrides):
    """A 2-block ViT on 32×32 images with 4×4 patches (8×8 grid): fast enough for any test."""
    settings = dict(num_classes=10, img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_dim=64)
    settings.update(overrides)
    return vitkit.create_model("Ti/16", **settings)


def randomize_head(model):
    """The reference head starts at zero, which blocks every gradient behind it."""
    with torch.no_grad():
        for p in model.head.parameters():
            p.normal_(std=0.1)
    return model


def run_until_checkpoint(config, min_step):
    """Start training ``config`` in a subprocess (any objective: the config says which) and kill -9
    it once a checkpoint at or after ``min_step`` exists (mid-epoch for the configs used here). The
    config is run as it is: through ``--config`` its preset's model_args would be merged in again."""
    run_dir = Path(config.out)
    config_file = run_dir.parent / "config.json"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config.to_json())
    script = (
        "import json, sys; from vitkit.train import TrainConfig, train; "
        "train(TrainConfig(**json.loads(open(sys.argv[1]).read())), progress=False)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            checkpoint = run_dir / "checkpoint.safetensors"
            if checkpoint.exists():
                from safetensors import safe_open

                try:
                    with safe_open(str(checkpoint), "pt") as handle:
                        step = json.loads(handle.metadata()["progress"])["step"]
                except Exception:  # being replaced right now: look again
                    step = -1
                if step >= min_step:
                    break
            if process.poll() is not None:
                pytest.fail("the training process ended before it could be interrupted")
            time.sleep(0.01)
        else:
            pytest.fail("no checkpoint appeared in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert not (run_dir / "model.safetensors").exists()  # it really was cut short
    return run_dir


# A 2-block ViT on 8×8 digits with 2×2 patches (16 tokens): an epoch takes about a second.
#: the paper's ViT: a class token and learned 1-D positions (the demo preset's model has neither)
PAPER_VIT = {"pos_embed": "learn", "pool": "token", "class_token": True}
TINY = {"patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64, **PAPER_VIT}


def model_args_flags(model_args):
    """``model_args`` as ``--model-args`` words (JSON values: ``true``, not Python's ``True``)."""
    return [f"{key}={json.dumps(value) if isinstance(value, bool) else value}" for key, value in model_args.items()]


def digits_config(tmp_path, **overrides):
    settings = {
        "data": "digits",
        "img_size": 8,
        "model_args": TINY,
        "epochs": 2,
        "batch_size": 64,
        "lr": 3e-3,
        "warmup_epochs": 0.2,
        "out": str(tmp_path / "run"),
        "checkpoint_every": 5,
        # none of the demo preset's MNIST augmentation: 8 px digits learn fastest without it
        "rotate": 0.0,
        "translate": 0.0,
        "zoom": None,
    }
    settings.update(overrides)
    return resolve_config(preset="demo", overrides=settings)


def torchrun(*args, processes=2, timeout=240):
    """``vitkit *args`` in ``processes`` processes on this machine, launched as torchrun launches them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command += ["-m", "vitkit.cli.main", *args, "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def write_config(config, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json())
    return str(path)


@contextlib.contextmanager
def logged(caplog, pattern):
    """Expect vitkit to log a warning matching ``pattern`` inside the block."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        yield
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert any(re.search(pattern, message) for message in messages), messages
