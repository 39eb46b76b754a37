"""What `transferflow serve` keeps of the requests it answers: the monitoring windows (recorder)
and, opt-in, inputs for labelling (capture). One call per answered request, after the model:
`observe` takes the features off the model's outputs, hands both on, and returns the
probabilities the endpoint answers with."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from transferflow.data.decode import image_shape
from transferflow.monitoring.features import split
from transferflow.serving.capture import FeedbackCapture
from transferflow.serving.recorder import Recorder

log = logging.getLogger(__name__)

MAGIC = ((b"\xff\xd8", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


def sniff(data: bytes) -> str:
    """The format of an encoded image from its first bytes (what the decoder accepted)."""
    return next((kind for magic, kind in MAGIC if data.startswith(magic)), "other")


@dataclass
class Watch:
    recorder: Recorder | None = None
    capture: FeedbackCapture | None = None

    def start(self) -> None:
        for part in (self.recorder, self.capture):
            if part is not None:
                part.start()

    def stop(self) -> None:
        """Write the open windows and the queued captures (graceful shutdown)."""
        for part in (self.recorder, self.capture):
            if part is not None:
                part.stop()

    def observe(self, served, outputs: np.ndarray, received, endpoint: str) -> np.ndarray:
        """`received`: the request's encoded uploads (:classify) or its pixels (:predict)."""
        if not served.feature_dim:
            return outputs
        probabilities, features = split(outputs, len(served.classes))
        try:
            if self.recorder is not None:
                self.recorder.record(served.version, served.classes, probabilities, features,
                                     describe_inputs(received, served.image_size))
            if self.capture is not None:
                self.capture.offer(served, probabilities, as_received(received), endpoint)
        except Exception:  # watching must never fail the request it watches
            log.exception("monitoring: an answer of %s could not be recorded", served.label)
        return probabilities


def describe_inputs(received, image_size: int) -> list[tuple[str, int]]:
    """(format, longer side in pixels) of each input; JSON pixels are 'pixels' at the model's size."""
    if isinstance(received, np.ndarray):
        return [("pixels", image_size)] * len(received)
    described = []
    for upload in received:
        shape = image_shape(upload.data)
        described.append((sniff(upload.data), max(shape) if shape else 0))
    return described


def as_received(received) -> list[tuple[bytes | np.ndarray, str]]:
    if isinstance(received, np.ndarray):
        return [(pixels, "pixels") for pixels in received]
    return [(upload.data, sniff(upload.data)) for upload in received]


def watch_for(name: str, settings, metrics) -> Watch | None:
    """The watch `transferflow serve`'s settings ask for: recording unless --no-monitor, capture
    when a rate or a confidence threshold is set; None when neither."""
    from transferflow.serving.recorder import replica_id

    capturing = settings.capture_rate > 0 or settings.capture_below > 0
    if not (settings.record or capturing):
        return None
    replica = replica_id()
    recorder = None
    if settings.record:
        recorder = Recorder(name, settings.window_seconds, settings.window_requests, metrics.registry,
                            errors_total=lambda: errors_total(metrics), replica=replica)
    capture = FeedbackCapture(name, settings.capture_rate, settings.capture_below, replica,
                              metrics.registry) if capturing else None
    return Watch(recorder, capture)


def errors_total(metrics) -> float:
    """Every request refused or failed so far (the transferflow_serve_errors counter, all labels)."""
    return sum(sample.value for family in metrics.errors.collect() for sample in family.samples
               if sample.name.endswith("_total"))
