"""Dynamic batching: requests that arrive close together share one forward pass.

One worker thread owns the model and does all of the server's torch work. It waits for a first
image, then gathers what is queued, and waits for more (up to ``max_wait_ms``, until ``max_batch``
are in) only while other requests are on their way (being decoded, see :meth:`expecting`). It
preprocesses them, runs them as one batch and hands each caller its row. Under load the batches
fill up (throughput); a request that is alone does not wait at all.

Why one thread for all torch work, and best the process's first: each OS thread that runs torch
operators gets its own OpenMP team, and once the teams together hold more threads than there
are cores, libgomp stops letting idle workers spin between operators, so every operator pays a
wake-up. Measured on 2 cores: a ViT-Ti/16 forward pass takes 8.6 ms in the thread that loaded the
model and 27 ms in a second thread (bf16). ``vitkit serve`` therefore runs :meth:`work` in its
main thread and the web server in another; ``thread=True`` (for tests and notebooks) starts a
worker thread instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import cores
from ..device import autocast, device_of
from ..models import VisionTransformer
from ..predict import class_probabilities


@dataclass
class _Job:
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    #: an image to classify, or None for a call
    image: Any = None
    #: a function to run on the worker (explanations), with its arguments
    call: Callable[..., Any] | None = None
    args: tuple = ()

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, result, error)


class DynamicBatcher:
    """Class probabilities for images, computed in shared batches on one worker thread.

    ``preprocess`` turns each input (e.g. a PIL image) into a tensor ``(C, H, W)`` on the worker;
    None means inputs arrive preprocessed. ``precision="bf16"`` autocasts; any other precision
    (``"fp32"``, or ``"int8"``, which ``vitkit serve --int8`` passes) runs the model as it is;
    ``max_batch=1`` turns batching off; ``multi_label``: a sigmoid per class instead of the softmax."""

    def __init__(
        self,
        model: VisionTransformer,
        preprocess: Callable[[Any], Tensor] | None = None,
        *,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        precision: str = "fp32",
        thread: bool = True,
        multi_label: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.model = model.eval()
        self.preprocess = preprocess or (lambda image: image)
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.precision = precision
        self.multi_label = multi_label
        self.device = device_of(model)
        self.batches = 0  # forward() calls so far: one per batch and one per explained image (tests read it)
        self._expected = 0  # requests announced but not yet queued
        self._expected_lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closing = False  # the worker took close()'s None: it finishes the jobs it holds, then stops
        self._thread = threading.Thread(target=self.work, name="vitkit-batcher", daemon=True) if thread else None
        if self._thread is not None:
            self._thread.start()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Announce a request that will soon ask for :meth:`probabilities` (wrap its decoding), so
        that a batch being gathered waits for it; without announced requests nobody waits."""
        with self._expected_lock:
            self._expected += 1
        try:
            yield
        finally:
            with self._expected_lock:
                self._expected -= 1

    async def probabilities(self, image: Any) -> Tensor:
        """Class probabilities ``(num_classes,)`` in fp32 for one image: softmax, or a sigmoid per
        class for a ``multi_label`` model."""
        return await self._submit(image=image)

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` on the worker thread, between batches (for other torch work)."""
        return await self._submit(call=call, args=args)

    async def _submit(self, **job: Any) -> Any:
        loop = asyncio.get_running_loop()
        submitted = _Job(loop.create_future(), loop, **job)
        self._jobs.put(submitted)
        return await submitted.future

    def close(self) -> None:
        """Stop :meth:`work` after the jobs already queued (and wait for its thread, if it has one)."""
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join()

    def work(self, while_true: Callable[[], bool] = lambda: True) -> None:
        """Serve jobs in the calling thread until :meth:`close`, or until ``while_true()`` turns
        false (checked every half second; e.g. the web server's thread is alive). The worker
        thread does this unless ``thread=False``.

        Classifications go first: calls (explanations, a forward and a backward pass each) run
        one at a time, and only while no image waits, so a request for 64 explanations delays
        another client's plain predict by one explanation at most, not by all 64."""
        images: deque[_Job] = deque()
        calls: deque[_Job] = deque()
        while images or calls or not self._closing:
            if not images and not calls:
                try:
                    first = self._jobs.get(timeout=0.5)  # wakes now and then, so Ctrl-C reaches a main thread
                except queue.Empty:
                    if not while_true():
                        return
                    continue
                self._sort(first, images, calls)
            self._take_queued(images, calls)
            cores.rebalance()  # in this thread: OpenMP's thread count is per calling thread
            if images:
                self._classify(self._gather(images, calls))
            elif calls:
                job = calls.popleft()
                try:
                    job.settle(job.call(*job.args))
                except Exception as error:  # the caller hears of it; the worker lives on
                    job.settle(error=error)

    def _sort(self, job: _Job | None, images: deque[_Job], calls: deque[_Job]) -> None:
        if job is None:
            self._closing = True
        else:
            (calls if job.call else images).append(job)

    def _take_queued(self, images: deque[_Job], calls: deque[_Job]) -> None:
        while True:
            try:
                self._sort(self._jobs.get_nowait(), images, calls)
            except queue.Empty:
                return

    def _gather(self, images: deque[_Job], calls: deque[_Job]) -> list[_Job]:
        """Up to max_batch image jobs for one batch, waiting up to max_wait for more while others
        are on their way (calls that arrive meanwhile wait in ``calls``)."""
        batch = [images.popleft() for _ in range(min(self.max_batch, len(images)))]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch and not self._closing:
            if images:
                batch.append(images.popleft())
                continue
            if self._jobs.empty() and not self._expected:  # nobody else is on the way: go now
                break
            try:
                self._sort(self._jobs.get(timeout=max(0.0, deadline - time.monotonic())), images, calls)
            except queue.Empty:
                break
        return batch

    def _classify(self, jobs: list[_Job]) -> None:
        ready = []
        for job in jobs:
            try:
                ready.append((job, self.preprocess(job.image)))
            except Exception as error:  # one bad image fails alone
                job.settle(error=error)
        if not ready:
            return
        try:
            rows = self.forward(torch.stack([image for _, image in ready]))
        except Exception as error:  # every waiting caller must hear of it, and the worker live on
            for job, _ in ready:
                job.settle(error=error)
            return
        for (job, _), row in zip(ready, rows, strict=True):
            job.settle(row)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Tensor:
        """Class probabilities ``(B, num_classes)`` for preprocessed images, in the calling thread:
        for a call that :meth:`run` runs on the worker (the batches use it too)."""
        with autocast(self.device, self.precision):
            logits = self.model(images.to(self.device))
        self.batches += 1
        return class_probabilities(logits, multi_label=self.multi_label).cpu()


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):  # the caller went away (cancelled)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
