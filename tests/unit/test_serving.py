"""The serving parts that need no server: micro-batching, request parsing, references."""

import asyncio

import numpy as np
import pytest

from transferflow.errors import RegistryError, RequestError
from transferflow.serving.batcher import MicroBatcher
from transferflow.serving.follower import Reference
from transferflow.serving.inputs import pixels_from_json, top_labels
from transferflow.serving.versions import ModelSlot, ServedVersion


class CountingModel:
    """Answers row i with [i's first pixel, 1 - it] and records every call's batch size."""

    def __init__(self):
        self.calls: list[int] = []

    def predict_on_batch(self, pixels):
        self.calls.append(len(pixels))
        first = pixels[:, 0, 0, 0] / 255
        return np.stack([first, 1 - first], axis=1)


def version(number: int) -> ServedVersion:
    return ServedVersion("m", number, ["a", "b"], 2, "0" * 64, CountingModel())


def images(*firsts: int) -> np.ndarray:
    pixels = np.zeros((len(firsts), 2, 2, 3), np.float32)
    pixels[:, 0, 0, 0] = firsts
    return pixels


def run_requests(batcher: MicroBatcher, requests: list[tuple[ServedVersion, np.ndarray]]) -> list:
    async def main():
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.predict(served, pixels) for served, pixels in requests))
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_requests_queued_together_share_model_calls_of_at_most_max_batch():
    served, sizes = version(1), []
    answers = run_requests(MicroBatcher(4, 0.0, on_batch=sizes.append),
                           [(served, images(i)) for i in range(10)])
    assert served.model.calls == [4, 4, 2] and sizes == [4, 4, 2]
    for i, answer in enumerate(answers):  # each request gets its own row back
        np.testing.assert_allclose(answer, [[i / 255, 1 - i / 255]])


def test_max_batch_one_calls_the_model_once_per_request():
    served = version(1)
    run_requests(MicroBatcher(1, 0.005), [(served, images(i)) for i in range(5)])
    assert served.model.calls == [1] * 5


def test_a_request_keeps_the_version_it_arrived_with_around_a_swap():
    old, new = version(1), version(2)
    requests = [(old, images(1)), (new, images(2)), (old, images(3, 4)), (new, images(5))]
    answers = run_requests(MicroBatcher(32, 0.0), requests)
    assert old.model.calls == [3] and new.model.calls == [2]  # one call per version, never mixed
    np.testing.assert_allclose(answers[2][:, 0], [3 / 255, 4 / 255])


def test_a_request_larger_than_max_batch_is_split_into_calls():
    served = version(1)
    [answer] = run_requests(MicroBatcher(4, 0.0), [(served, images(*range(10)))])
    assert served.model.calls == [4, 4, 2] and len(answer) == 10


def test_a_swap_returns_the_previous_version_and_clears_loading():
    slot = ModelSlot()
    slot.loading = 1
    assert slot.swap(version(1)) is None and slot.loading is None
    assert slot.swap(version(2)).version == 1 and slot.current.version == 2


def test_tf_serving_row_and_columnar_requests_parse_to_pixels():
    pixels = np.arange(2 * 2 * 2 * 3).reshape(2, 2, 2, 3)
    rows, key = pixels_from_json(f'{{"instances": {pixels.tolist()}}}'.encode(), 2)
    assert key == "predictions" and rows.dtype == np.float32 and rows.shape == (2, 2, 2, 3)
    named = [{"image": p} for p in pixels.tolist()]
    assert np.array_equal(pixels_from_json(str({"instances": named}).replace("'", '"').encode(), 2)[0], rows)
    columns, key = pixels_from_json(f'{{"inputs": {{"image": {pixels.tolist()}}}}}'.encode(), 2)
    assert key == "outputs" and np.array_equal(columns, rows)


@pytest.mark.parametrize("body, words", [
    (b'{"instances": [[[[0, 0, 0]]]]}', "[2, 2, 3]"),
    (b'{"instances": [{"pixels": 1}]}', "only input is 'image'"),
    (b'{"instances": [[[[null, 0, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]]]}', "numbers"),
    (b'{"instances": [[[[true, true, true], [true, true, true]], [[true, true, true], [true, true, true]]]]}',
     "booleans"),
    (b'{"instances": 5}', "must be a list"),
    (b'{"instances": [], "signature_name": "other"}', "'other' does not exist"),
    (b"[1, 2]", "JSON object"),
    (b'{"instances": []}', "a list of 0"),
])
def test_bad_predict_bodies_name_what_is_wrong(body, words):
    with pytest.raises(RequestError) as raised:
        pixels_from_json(body, 2)
    assert words in str(raised.value) and raised.value.status == 400


def test_top_labels_are_most_likely_first():
    assert top_labels(np.array([0.2, 0.7, 0.1]), ["a", "b", "c"], 2) == [
        {"class": "b", "probability": pytest.approx(0.7)}, {"class": "a", "probability": pytest.approx(0.2)}]


@pytest.mark.parametrize("text, expected", [
    ("flowers@production", Reference("flowers", "production", None)),
    ("flowers:3", Reference("flowers", None, 3)),
    ("flowers", Reference("flowers", "latest", None)),
])
def test_references_are_pinned_or_followed(text, expected):
    assert Reference.parse(text) == expected


def test_a_malformed_reference_says_what_is_expected():
    with pytest.raises(RegistryError, match="NAME:VERSION or NAME@ALIAS"):
        Reference.parse("flowers@Production!")
