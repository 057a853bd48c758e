"""Several processes on one machine (gloo, loopback), launched as torchrun launches them."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import digits_config, torchrun, write_config
from vitkit.interop import load_model
from vitkit.train import resume_run, train
from vitkit.train.accuracy import score_model
from vitkit.train.distributed import Processes, rank_batches

# torchrun's processes would fight another pytest worker's for the 2 cores: one worker runs them all
pytestmark = pytest.mark.xdist_group("torchrun")


def test_each_rank_takes_its_own_micro_batches():
    order = list(range(12))
    ranks = [rank_batches(order, 2, Processes(r, 3)) for r in range(3)]
    assert ranks == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10, 11]]
    assert sorted(index for share in ranks for index in share) == order


def _without_key_bias(name, tensor):
    """The key bias adds the same logit to a query's every key, so softmax ignores it and its
    gradient is zero up to rounding; Adam scales that rounding noise up to learning-rate-sized
    steps, so it differs between any two ways of summing the gradient. Leave it out."""
    if not name.endswith("attn.qkv.bias"):
        return tensor
    q, _, v = tensor.chunk(3)
    return torch.cat([q, v])


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_train_like_one_with_twice_the_batch(tmp_path, fsdp):
    settings = {"steps": 3, "warmup_epochs": 0, "precision": "fp32", "checkpoint_every": 0}
    settings |= {"crop_scale": [0.6, 1.0], "rotate": 15, "erase": 0.5}  # the same per sample, whatever the split
    one = train(digits_config(tmp_path / "one", batch_size=64, **settings), progress=False)
    two = digits_config(tmp_path / "two", batch_size=32, fsdp=fsdp, **settings)
    torchrun("train", "--config", write_config(two, tmp_path / "two.json"))
    a = load_file(str(Path(one.run_dir) / "model.safetensors"))
    b = load_file(str(Path(two.out) / "model.safetensors"))
    assert max((_without_key_bias(k, a[k]) - _without_key_bias(k, b[k])).abs().max().item() for k in a) < 1e-5
    # Held-out metrics: 359 held-out digits (odd) over 2 processes, each counted once, same accuracy.
    record = json.loads((Path(two.out) / "metrics.jsonl").read_text().splitlines()[-1])
    alone = score_model(load_model(two.out), "digits")
    assert record["val_images"] == alone.count == 359
    assert abs(record["val_top1"] - alone.top1) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_a_checkpoint_of_two_processes_resumes_with_one_and_with_two(tmp_path, fsdp):
    config = digits_config(tmp_path / "pair", epochs=1, checkpoint_every=0, fsdp=fsdp)
    torchrun("train", "--config", write_config(config, tmp_path / "pair.json"))
    run_dir = Path(config.out)
    settings = json.loads((run_dir / "train_config.json").read_text())
    settings["epochs"] = 2  # train on: one more epoch
    (run_dir / "train_config.json").write_text(json.dumps(settings))
    (run_dir / "model.safetensors").unlink()
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)

    alone = resume_run(run_dir, progress=False)
    torchrun("train", "--resume", str(copy))
    for folder in (run_dir, copy):
        epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]
        assert (folder / "model.safetensors").is_file()
    assert alone.final_top1 > 0.3
    assert json.loads((copy / "summary.json").read_text())["final_top1"] > 0.3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_process_that_dies_stops_the_other_with_a_clear_error(tmp_path):
    config = digits_config(tmp_path / "run", epochs=50, checkpoint_every=5, dist_timeout=30)
    config_file = write_config(config, tmp_path / "config.json")
    port = _free_port()
    started = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)}
        env.update(WORLD_SIZE="2", LOCAL_RANK=str(rank))
        command = [sys.executable, "-m", "vitkit.cli.main", "train", "--config", config_file, "--quiet"]
        started.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    survivor, victim = started
    checkpoint = Path(config.out) / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and survivor.poll() is None:
        time.sleep(0.1)
    assert checkpoint.exists(), "training did not get going"
    victim.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        _, stderr = survivor.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        survivor.kill()
        raise AssertionError("the surviving process hung after its peer died") from None
    victim.wait()
    assert survivor.returncode == 1
    assert "another process of the job failed or stopped answering" in stderr
    assert "--resume" in stderr
    assert time.monotonic() - killed_at < 60
    assert load_file(str(checkpoint))  # what was written stays readable
