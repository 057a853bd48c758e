"""The cores shared between the vitkit processes of one machine."""

import math
import subprocess
import sys

import pytest
import torch

from vitkit import cores
from vitkit.cores import CoreShare


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _look_now(share):
    share._checked = -math.inf  # rebalance looks at most once a second


def test_a_process_takes_its_share_and_follows_others_starting_and_ending(tmp_path, threads):
    share = CoreShare(tmp_path, cores=4)
    assert share.rebalance() == 4
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(other.pid)).touch()  # as another vitkit process registers itself
        assert share.rebalance() == 4  # not looked again within the second
        _look_now(share)
        assert share.rebalance() == 2
    finally:
        other.kill()
        other.wait()
    _look_now(share)
    assert share.rebalance() == 4
    assert not (tmp_path / str(other.pid)).exists()  # the ended process's entry is gone
    share.leave()
    assert list(tmp_path.iterdir()) == []


def test_every_process_keeps_at_least_one_thread(tmp_path, threads):
    share = CoreShare(tmp_path, cores=2)
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    try:
        for sleeper in sleepers:
            (tmp_path / str(sleeper.pid)).touch()
        assert share.rebalance() == 1
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()
        share.leave()


def test_a_thread_count_the_user_chose_is_kept(monkeypatch, threads):
    monkeypatch.setattr(cores, "_share", None)
    monkeypatch.setenv("VITKIT_THREADS", "1")
    assert cores.share_cores() is None and torch.get_num_threads() == 1
    monkeypatch.setenv("VITKIT_THREADS", "two")
    with pytest.raises(ValueError, match=r"VITKIT_THREADS='two': give a number of threads \(1 or more\), or unset it"):
        cores.share_cores()
    monkeypatch.delenv("VITKIT_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun and make test set it
    assert cores.share_cores() is None


def test_the_commands_that_share_cores_are_commands():
    from vitkit.cli.main import SHARES_CORES, build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    unknown = SHARES_CORES - set(commands)
    assert not unknown, unknown
