"""Dynamic batching: requests that arrive close together share one forward pass.

One worker thread owns the model. It waits for a first image, then gathers more for up to
``max_wait_ms`` or until ``max_batch`` are in, runs them as one batch and hands each caller its
row. Under load the batches fill up (throughput); alone, a request waits at most ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..models import VisionTransformer


@dataclass
class _Job:
    image: Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class DynamicBatcher:
    """Class probabilities for preprocessed images ``(C, H, W)``, computed in shared batches.

    ``precision`` is ``"bf16"`` (autocast) or ``"fp32"``; ``max_batch=1`` turns batching off."""

    def __init__(
        self, model: VisionTransformer, *, max_batch: int = 16, max_wait_ms: float = 5.0, precision: str = "fp32"
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.model = model.eval()
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.precision = precision
        self.device = next(model.parameters()).device
        self.batches = 0  # forward passes run so far (for /v1/model and tests)
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="vitkit-batcher", daemon=True)
        self._thread.start()

    async def probabilities(self, image: Tensor) -> Tensor:
        """Softmax class probabilities ``(num_classes,)`` in fp32 for one preprocessed image."""
        loop = asyncio.get_running_loop()
        job = _Job(image, loop.create_future(), loop)
        self._jobs.put(job)
        return await job.future

    def close(self) -> None:
        """Stop the worker after the jobs already queued."""
        self._jobs.put(None)
        self._thread.join()

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _work(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            try:
                rows = self._forward(torch.stack([job.image for job in jobs]))
            except Exception as error:  # every waiting caller must hear of it, and the worker live on
                for job in jobs:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, error)
                continue
            for job, row in zip(jobs, rows, strict=True):
                job.loop.call_soon_threadsafe(_settle, job.future, row, None)

    @torch.inference_mode()
    def _forward(self, images: Tensor) -> Tensor:
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        with autocast:
            logits = self.model(images.to(self.device))
        self.batches += 1
        return logits.float().softmax(dim=-1).cpu()


def _settle(future: asyncio.Future, result: Tensor | None, error: Exception | None) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):  # the caller went away (cancelled)
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
