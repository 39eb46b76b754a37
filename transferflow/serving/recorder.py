"""Recording what serving sees, off the request path: each answered request hands its
probabilities and penultimate features to a bounded queue (put_nowait: never blocks; when full
the request is dropped from the statistics and counted); one thread folds them into the open
window of their version (transferflow.monitoring.sketch), and a writer thread puts each closed
window to object storage.

A window is one period (default an hour, aligned to multiples of its length since the epoch,
so that every replica's periods coincide) or, when --monitor-window-requests come sooner, a part
of one. On a graceful shutdown (SIGTERM) the open windows are closed and written before the
process exits; a crash (SIGKILL, OOM) loses the open windows: at most one period or one window
of requests per version.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from prometheus_client import Counter

from transferflow import storage
from transferflow.monitoring.layout import window_key
from transferflow.monitoring.sketch import Sketch, projection
from transferflow.monitoring.windows import window_document

log = logging.getLogger(__name__)

QUEUE_ITEMS = 4096  # requests waiting to be folded in; at ~2 KB of features per image, a few MB
FOLD_BATCH = 256  # queued answers folded in one pass
TICK_S = 0.5  # how often the recording thread looks at the clock when no request comes
WRITE_ATTEMPTS = 3
REPLICA_VARIABLE = "TRANSFERFLOW_REPLICA_ID"


def replica_id() -> str:
    """$TRANSFERFLOW_REPLICA_ID, else the host name (a pod's name) and a random suffix, so that a
    restarted process never writes the key an earlier one wrote."""
    given = os.environ.get(REPLICA_VARIABLE) or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", given)[:80]


@dataclass
class Item:
    version: int
    classes: list[str]
    probabilities: np.ndarray
    features: np.ndarray
    inputs: list[tuple[str, int]]
    at: float  # time.time() when answered


@dataclass
class OpenWindow:
    version: int
    sketch: Sketch
    period_start: float  # epoch seconds
    part: int
    opened_at: float


class Recorder:
    """Per served version and window, one summary object under monitoring/<name>/<version>/."""

    def __init__(self, name: str, window_seconds: float, window_requests: int, metrics_registry,
                 errors_total=lambda: 0.0, replica: str | None = None, bucket: str | None = None):
        self.name, self.window_seconds, self.window_requests = name, window_seconds, window_requests
        self.replica, self.bucket = replica or replica_id(), bucket or storage.bucket_name()
        self.errors_total, self._errors_seen, self._pending_errors = errors_total, None, 0.0
        self.queue: queue.Queue[Item] = queue.Queue(QUEUE_ITEMS)
        self.open: dict[int, OpenWindow] = {}
        self.parts: dict[tuple[int, float], int] = {}
        self.last_version: int | None = None
        self.dropped, self._dropped_lock = 0, threading.Lock()  # counted on the request path
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitoring-recorder", daemon=True)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="monitoring-writer")
        self.dropped_metric = Counter("transferflow_serve_monitoring_dropped", "answered images left out of "
                                      "the monitoring windows because the recording queue was full",
                                      registry=metrics_registry)
        self.windows_metric = Counter("transferflow_serve_monitoring_windows", "monitoring windows closed, "
                                      "by outcome (written, lost)", ["outcome"], registry=metrics_registry)

    def start(self) -> None:
        self._errors_seen = self.errors_total()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Fold in what is queued, close every open window and write it (the SIGTERM path)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._writer.shutdown(wait=True)

    def record(self, version: int, classes: list[str], probabilities: np.ndarray, features: np.ndarray,
               inputs: list[tuple[str, int]]) -> None:
        """On the request path: hand the answer over, or count it dropped; never blocks."""
        try:
            self.queue.put_nowait(Item(version, classes, probabilities, features, inputs, time.time()))
        except queue.Full:
            with self._dropped_lock:
                self.dropped += len(probabilities)
            self.dropped_metric.inc(len(probabilities))

    def _run(self) -> None:
        while not (self._stopping.is_set() and self.queue.empty()):
            try:
                items = [self.queue.get(timeout=TICK_S)]
            except queue.Empty:
                items = []
            while items and len(items) < FOLD_BATCH:  # what else is queued: folded together
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._fold(items)
                self._tick(time.time())
            except Exception:  # a bug here must not stop recording for the life of the server
                log.exception("monitoring: a recorded answer could not be folded in")
        for window in list(self.open.values()):
            self._close(window, time.time(), "shutdown")

    def _fold(self, items: list[Item]) -> None:
        """Queued answers into their windows: runs of one version and window in one NumPy pass
        each (per-request Python work would compete with the server's event loop for the GIL)."""
        start = 0
        while start < len(items):
            window = self._window_for(items[start])
            room = self.window_requests - window.sketch.requests
            run = [items[start]]
            for item in items[start + 1:start + room]:
                if item.version != run[0].version or self._period_of(item.at) != window.period_start:
                    break
                run.append(item)
            requests = window.sketch.requests + len(run)
            window.sketch.add(np.concatenate([i.probabilities for i in run]),
                              np.concatenate([i.features for i in run]), [x for i in run for x in i.inputs])
            window.sketch.requests = requests  # add() counted one request for the whole run
            self.last_version, start = run[-1].version, start + len(run)
            if requests >= self.window_requests:
                self._close(window, run[-1].at, "requests")

    def _window_for(self, item: Item) -> OpenWindow:
        period = self._period_of(item.at)
        window = self.open.get(item.version)
        if window is not None and window.period_start != period:
            self._close(window, item.at, "period")
            window = None
        if window is None:
            part = self.parts.get((item.version, period), 0)
            self.parts = {key: value for key, value in self.parts.items() if key[1] == period}
            self.parts[(item.version, period)] = part + 1
            sketch = Sketch(item.classes, projection(item.features.shape[1]), seed=part)
            sketch.errors, self._pending_errors = int(self._pending_errors), 0.0
            with self._dropped_lock:
                sketch.dropped, self.dropped = self.dropped, 0
            window = self.open[item.version] = OpenWindow(item.version, sketch, period, part, item.at)
        return window

    def _period_of(self, moment: float) -> float:
        return moment - moment % self.window_seconds

    def _tick(self, now: float) -> None:
        """Close windows whose period ended; count the refusals since the last tick."""
        total = self.errors_total()
        if self._errors_seen is not None and total > self._errors_seen:
            current = self.open.get(self.last_version)
            if current is not None:
                current.sketch.errors += int(total - self._errors_seen)
            else:
                self._pending_errors += total - self._errors_seen
        self._errors_seen = total
        for window in list(self.open.values()):
            if now >= window.period_start + self.window_seconds:
                self._close(window, window.period_start + self.window_seconds, "period")

    def _close(self, window: OpenWindow, at: float, why: str) -> None:
        self.open.pop(window.version, None)
        period_start = datetime.fromtimestamp(window.period_start, UTC)
        document = window_document(window.sketch, name=self.name, version=window.version,
                                   replica=self.replica, period_start=period_start,
                                   period_seconds=self.window_seconds, part=window.part,
                                   opened_at=datetime.fromtimestamp(window.opened_at, UTC),
                                   closed_at=datetime.fromtimestamp(max(at, window.opened_at), UTC),
                                   closed_by=why)
        key = window_key(self.name, window.version, period_start, window.part, self.replica)
        self._writer.submit(self._write, key, document)

    def _write(self, key: str, document: dict) -> None:
        """Put one window; a store that keeps failing loses it (logged and counted), never the server."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                storage.put_json(self.bucket, key, document, if_none_match=True)
                self.windows_metric.labels("written").inc()
                log.info("monitoring: wrote %s (%d requests, %d images)", key, document["requests"],
                         document["images"])
                return
            except storage.PreconditionFailed:  # already there: an earlier attempt of ours landed
                self.windows_metric.labels("written").inc()
                return
            except Exception as exc:
                if attempt == WRITE_ATTEMPTS - 1:
                    self.windows_metric.labels("lost").inc()
                    log.warning("monitoring: window %s lost after %d attempts: %s", key, WRITE_ATTEMPTS, exc)
                    return
                time.sleep(2 ** attempt)
