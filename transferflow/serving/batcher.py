"""Micro-batching: the requests that arrive together are answered by one model call.

A model call on a batch of 32 costs far less than 32 calls on one image (one dispatch, and
matrix products wide enough to use the cores). The batcher runs on the event loop; the model
runs on one worker thread, so the loop keeps accepting and decoding requests meanwhile, and
those that arrive while the model is busy form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from transferflow.errors import RequestError
from transferflow.serving.versions import ServedVersion

log = logging.getLogger(__name__)


@dataclass
class Job:
    served: ServedVersion  # the version the request took when it arrived; it answers on it
    pixels: np.ndarray     # float32 (n, size, size, 3)
    future: asyncio.Future


RETRY_AFTER_S = 1  # what a refused client is told to wait: about one batch of model calls


def overloaded(message: str) -> RequestError:
    """429 with Retry-After, as TF Serving answers when its batching queue is full."""
    return RequestError(f"{message}; retry after {RETRY_AFTER_S} s", status=429, kind="overloaded",
                        headers={"Retry-After": str(RETRY_AFTER_S)})


class MicroBatcher:
    """Gathers up to max_batch images, waiting at most max_wait_s for more, and only while another
    request is still on its way (being read or decoded): a lone request never waits.
    max_batch 1 turns batching off. At most max_queue images wait for the model: a request that
    would exceed it is refused (429) rather than queued behind an ever longer wait."""

    def __init__(self, max_batch: int, max_wait_s: float, on_batch: Callable[[int], None] = lambda n: None,
                 max_queue: int | None = None):
        self.max_batch, self.max_wait_s, self.on_batch = max_batch, max_wait_s, on_batch
        self.max_queue = max_queue if max_queue is not None else 64 * max_batch
        self.queued = 0  # images queued (or carried) and not yet in a model call; event loop only
        self.arriving = 0  # requests admitted but not yet queued; changed on the event loop only
        self._queue: asyncio.Queue[Job] | None = None
        self._carry: Job | None = None  # taken from the queue but did not fit the last batch
        self._batch: list[Job] = []  # the jobs of the batch being answered
        self._task: asyncio.Task | None = None
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve_forever(), name="micro-batcher")
        self._task.add_done_callback(self._stopped)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def _stopped(self, task: asyncio.Task) -> None:
        """The batcher's task ended: say why, and fail what waits, so no request hangs on it."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the micro-batcher stopped: %r; requests are refused until a restart", task.exception())
        error = RequestError("the server's micro-batcher stopped; retry on another replica", status=503,
                             kind="batcher_stopped")
        for job in [*self._batch, *([self._carry] if self._carry else []), *_drain(self._queue)]:
            _settle(job.future, exception=error)
        self._batch, self._carry, self.queued = [], None, 0

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._model_thread.shutdown(wait=True)

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Around reading and decoding a request: the batcher then knows one more is coming."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1

    async def predict(self, served: ServedVersion, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for these images, computed by `served` in a batch with other requests."""
        if not self.running:
            raise RequestError("the server's micro-batcher stopped; retry on another replica", status=503,
                               kind="batcher_stopped")
        if len(pixels) > self.max_queue:
            raise RequestError(f"{len(pixels)} images in one request, more than this server queues "
                               f"(--max-queue {self.max_queue}); send fewer per request", status=413,
                               kind="too_many_images")
        if self.queued + len(pixels) > self.max_queue:
            raise overloaded(f"the server is busy: {self.queued} images already wait for the model "
                             f"(--max-queue {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        self.queued += len(pixels)
        self._queue.put_nowait(Job(served, pixels, future))
        return await future

    async def _serve_forever(self) -> None:
        while True:
            self._batch = await self._collect()
            self.queued -= sum(len(job.pixels) for job in self._batch)
            for group in _by_version(self._batch):
                await self._run(group)
            self._batch = []

    async def _collect(self) -> list[Job]:
        """The next batch: whatever is queued, up to max_batch images, plus what arrives within
        max_wait_s while requests are still on their way."""
        first, self._carry = self._carry or await self._queue.get(), None
        jobs, rows = [first], len(first.pixels)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while rows < self.max_batch:
            job = await self._next_job(deadline)
            if job is None:
                break
            if rows + len(job.pixels) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            rows += len(job.pixels)
        return jobs

    async def _next_job(self, deadline: float) -> Job | None:
        with contextlib.suppress(asyncio.QueueEmpty):
            return self._queue.get_nowait()
        left = deadline - asyncio.get_running_loop().time()
        if self.arriving == 0 or left <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), left)
        except TimeoutError:
            return None

    async def _run(self, jobs: list[Job]) -> None:
        """One model call for jobs of one version; each request gets its own rows back."""
        served = jobs[0].served
        pixels = np.concatenate([job.pixels for job in jobs]) if len(jobs) > 1 else jobs[0].pixels
        self.on_batch(len(pixels))
        loop = asyncio.get_running_loop()
        try:
            probabilities = await loop.run_in_executor(self._model_thread, served.predict, pixels,
                                                       self.max_batch)
        except Exception as exc:  # the model failed: every request of this batch gets the error
            log.exception("%s failed on a batch of %d images", served.label, len(pixels))
            for job in jobs:
                _settle(job.future, exception=exc)
            return
        start = 0
        for job in jobs:
            _settle(job.future, result=probabilities[start:start + len(job.pixels)])
            start += len(job.pixels)


def _by_version(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by the version they took (more than one group only around a swap), in order."""
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(id(job.served), []).append(job)
    return list(groups.values())


def _drain(queue: asyncio.Queue | None) -> list[Job]:
    jobs = []
    while queue is not None and not queue.empty():
        jobs.append(queue.get_nowait())
    return jobs


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client gone)
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
