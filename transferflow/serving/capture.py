"""Feedback capture (opt-in): inputs the model was unsure about (top probability below
--capture-below-confidence) and a random share of all inputs (--capture-rate) are stored as
received under feedback/<name>/unlabeled/<date>/, each with a JSON sidecar saying what the model
answered, so that a person can label them (feedback/<name>/labeled/<class>/) for a retrain.

Off the request path like the recorder: the request only decides and enqueues; a writer thread
uploads the image, then its sidecar (a sidecar never names a missing image). The queue is bounded
by bytes: when full, a capture is dropped and counted, never waited for.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from prometheus_client import Counter

from transferflow import storage
from transferflow.monitoring.layout import unlabeled_prefix

log = logging.getLogger(__name__)

QUEUE_BYTES = 64 * 2**20  # captured bytes waiting for upload, at most
SUFFIXES = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp"}
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "bmp": "image/bmp"}


@dataclass
class Captured:
    data: bytes | np.ndarray  # the encoded image as received, or :predict's pixels (stored as PNG)
    kind: str  # jpeg | png | gif | bmp | pixels
    sidecar: dict


class FeedbackCapture:
    def __init__(self, name: str, rate: float, below: float, replica: str, metrics_registry,
                 bucket: str | None = None, seed: int | None = None):
        self.name, self.rate, self.below, self.replica = name, rate, below, replica
        self.bucket = bucket or storage.bucket_name()
        self.rng = np.random.default_rng(seed)
        self.queue: queue.Queue[Captured | None] = queue.Queue()
        self.queued_bytes, self._lock = 0, threading.Lock()
        self._thread = threading.Thread(target=self._run, name="feedback-writer", daemon=True)
        self.captured = Counter("transferflow_serve_feedback_captured", "inputs stored for labelling, by "
                                "reason (low_confidence, sampled)", ["reason"], registry=metrics_registry)
        self.dropped = Counter("transferflow_serve_feedback_dropped", "inputs chosen for capture but dropped "
                               "(queue full or upload failed)", registry=metrics_registry)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Upload what is queued, then stop."""
        self.queue.put(None)
        self._thread.join(timeout)

    def offer(self, served, probabilities: np.ndarray, received: list[tuple[bytes | np.ndarray, str]],
              endpoint: str) -> None:
        """On the request path: choose which of a request's inputs to keep, and enqueue them."""
        confidence = probabilities.max(axis=1)
        sampled = self.rng.random(len(confidence)) < self.rate
        for index in np.flatnonzero((confidence < self.below) | sampled):
            data, kind = received[index]
            reason = "low_confidence" if confidence[index] < self.below else "sampled"
            self._enqueue(Captured(data, kind, self._sidecar(served, probabilities[index], reason, endpoint)))

    def _sidecar(self, served, row: np.ndarray, reason: str, endpoint: str) -> dict:
        top = np.argsort(row)[::-1][:3]
        return {"model": served.name, "version": served.version, "prediction": served.classes[int(top[0])],
                "confidence": float(row[top[0]]),
                "top": [{"class": served.classes[int(i)], "probability": float(row[i])} for i in top],
                "reason": reason, "endpoint": endpoint, "replica": self.replica,
                "captured_at": datetime.now(UTC).isoformat(timespec="milliseconds")}

    def _enqueue(self, item: Captured) -> None:
        size = item.data.nbytes if isinstance(item.data, np.ndarray) else len(item.data)
        with self._lock:
            if self.queued_bytes + size > QUEUE_BYTES:
                self.dropped.inc()
                return
            self.queued_bytes += size
        self.queue.put_nowait(item)

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            size = item.data.nbytes if isinstance(item.data, np.ndarray) else len(item.data)
            try:
                self._store(item)
            except Exception as exc:  # the store is down: this capture is lost, serving goes on
                self.dropped.inc()
                log.warning("feedback: a captured input could not be stored: %s", exc)
            finally:
                with self._lock:
                    self.queued_bytes -= size

    def _store(self, item: Captured) -> None:
        data, kind = item.data, item.kind
        if kind == "pixels":
            data, kind = png_of(data), "png"
        moment = datetime.now(UTC)
        stem = (f"{unlabeled_prefix(self.name)}{moment:%Y-%m-%d}/{moment:%H%M%S}-{self.replica}-"
                f"{uuid.uuid4().hex[:8]}")
        image_key = stem + SUFFIXES.get(kind, ".bin")
        storage.put_bytes(self.bucket, image_key, data, CONTENT_TYPES.get(kind, "application/octet-stream"))
        sidecar = {**item.sidecar, "image": image_key.rsplit("/", 1)[-1], "format": kind, "bytes": len(data)}
        storage.put_json(self.bucket, stem + ".json", sidecar)
        self.captured.labels(item.sidecar["reason"]).inc()


def png_of(pixels: np.ndarray) -> bytes:
    """:predict's pixels (values 0-255) as a lossless PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
