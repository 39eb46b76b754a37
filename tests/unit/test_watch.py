"""The serving watch without servers: what one answered request hands to the recorder, and that a
failure there never fails the request."""

import io

import numpy as np
from PIL import Image

from transferflow.serving.inputs import Upload
from transferflow.serving.versions import ServedVersion
from transferflow.serving.watch import Watch, sniff


class Recorder:
    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def record(self, *args):
        if self.fail:
            raise RuntimeError("the recorder is broken")
        self.calls.append(args)


def png(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


SERVED = ServedVersion("m", 3, ["a", "b"], 32, "0" * 64, model=None, feature_dim=4)
OUTPUTS = np.array([[0.9, 0.1, 1, 2, 3, 4], [0.2, 0.8, 5, 6, 7, 8]], np.float32)  # probabilities, features


def test_the_answer_is_the_probabilities_and_the_recorder_gets_features_and_inputs():
    recorder = Recorder()
    uploads = [Upload("a.png", png(40, 300)), Upload("b.png", png(20, 20))]
    answered = Watch(recorder).observe(SERVED, OUTPUTS, uploads, "classify")
    np.testing.assert_array_equal(answered, OUTPUTS[:, :2])
    [(version, classes, probabilities, features, inputs)] = recorder.calls
    assert (version, classes) == (3, ["a", "b"]) and inputs == [("png", 300), ("png", 20)]
    np.testing.assert_array_equal(features, OUTPUTS[:, 2:])
    pixels = np.zeros((2, 32, 32, 3), np.float32)
    Watch(recorder).observe(SERVED, OUTPUTS, pixels, "predict")
    assert recorder.calls[-1][-1] == [("pixels", 32), ("pixels", 32)]


def test_a_failing_recorder_does_not_fail_the_request():
    answered = Watch(Recorder(fail=True)).observe(SERVED, OUTPUTS, [Upload("a", png(8, 8))] * 2, "classify")
    np.testing.assert_array_equal(answered, OUTPUTS[:, :2])


def test_formats_are_told_by_their_first_bytes():
    assert [sniff(data) for data in (b"\xff\xd8\xff", png(1, 1), b"GIF89a", b"BM..", b"hello")] == [
        "jpeg", "png", "gif", "bmp", "other"]


def test_capture_keeps_low_confidence_inputs_and_a_sampled_share():
    from prometheus_client import CollectorRegistry

    from transferflow.serving.capture import FeedbackCapture

    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.7, 0.3]], np.float32)
    received = [(b"\xff\xd8a", "jpeg"), (b"\xff\xd8b", "jpeg"), (b"\xff\xd8c", "jpeg")]
    below = FeedbackCapture("m", 0.0, 0.6, "r", CollectorRegistry(), bucket="unused", seed=0)
    below.offer(SERVED, probabilities, received, "classify")
    [kept] = [below.queue.get_nowait() for _ in range(below.queue.qsize())]
    assert kept.data == b"\xff\xd8b" and kept.sidecar["reason"] == "low_confidence"
    assert (kept.sidecar["prediction"], kept.sidecar["version"]) == ("a", 3)
    assert kept.sidecar["confidence"] == np.float32(0.55)
    everything = FeedbackCapture("m", 1.0, 0.0, "r", CollectorRegistry(), bucket="unused", seed=0)
    everything.offer(SERVED, probabilities, received, "classify")
    assert [everything.queue.get_nowait().sidecar["reason"] for _ in range(3)] == ["sampled"] * 3
