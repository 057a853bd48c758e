"""The machine's cores, shared fairly between the vitkit processes running on it.

Two torch processes that each run one OpenMP thread per core oversubscribe the machine: every
parallel region waits at its barrier for a thread the other process has descheduled. Measured
on 2 AVX2 EPYC cores (the demo model's training step): alone 1,024 img/s; two side by side at 2
threads each 203 img/s each (a fifth); at 1 thread each 542–557 img/s each (together more than
one alone); with ``OMP_WAIT_POLICY=PASSIVE`` 460–471.

So each long-running vitkit process (train, serve, predict, eval) registers in
``$VITKIT_HOME/processes/`` and takes ``cores // processes`` threads (at least one), looking again
at most once a second (:func:`rebalance`), so a process that starts or ends beside it changes its
share within a second. A thread count chosen by the user (``OMP_NUM_THREADS``, as torchrun sets
it, or ``VITKIT_THREADS``) is kept as it is. Results are the same for any thread count up to
rounding; ``--deterministic`` runs keep their count.
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

import torch

from .fileio import cache_dir, process_alive

#: seconds between two looks at the other processes
_EVERY = 1.0


class CoreShare:
    """This process's share of the cores, among the vitkit processes registered in ``folder``."""

    def __init__(self, folder: Path, cores: int) -> None:
        self.folder = folder
        self.cores = cores
        self.entry = folder / str(os.getpid())
        self._checked = -_EVERY
        folder.mkdir(parents=True, exist_ok=True)
        self.entry.touch()
        atexit.register(self.leave)

    def processes(self) -> int:
        """The live vitkit processes registered (this one among them); stale entries are removed."""
        live = 0
        for entry in self.folder.iterdir():
            if not entry.name.isdigit():
                continue
            if process_alive(int(entry.name)):
                live += 1
            else:
                entry.unlink(missing_ok=True)
        return max(live, 1)

    def rebalance(self) -> int:
        """Set torch's threads to this process's share (at most once a second); the thread count."""
        now = time.monotonic()
        if now - self._checked >= _EVERY:
            self._checked = now
            threads = max(1, self.cores // self.processes())
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)
        return torch.get_num_threads()

    def leave(self) -> None:
        self.entry.unlink(missing_ok=True)


_share: CoreShare | None = None


def share_cores() -> CoreShare | None:
    """Register this process and take its share of the cores now; None (and nothing changed)
    where the user chose the thread count. Call :func:`rebalance` as the work goes on."""
    global _share
    chosen = os.environ.get("VITKIT_THREADS", "").strip()
    if chosen:
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f"VITKIT_THREADS={chosen!r}: give a number of threads (1 or more), or unset it")
        torch.set_num_threads(int(chosen))
    elif _share is None and not os.environ.get("OMP_NUM_THREADS"):
        _share = CoreShare(cache_dir() / "processes", torch.get_num_threads())
    if _share is not None:
        _share.rebalance()
    return _share


def rebalance() -> None:
    """Follow processes that started or ended beside this one (cheap: looks once a second)."""
    if _share is not None:
        _share.rebalance()
