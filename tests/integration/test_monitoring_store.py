"""Monitoring's storage side on real SeaweedFS, without a server process: the recorder's windows
(per version, per part, on shutdown, per replica), a full queue, and a version's reference
(computed on demand once, verified on every read)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.monitoring.layout import windows_prefix
from transferflow.monitoring.windows import read_window, window_keys
from transferflow.registry import Registry
from transferflow.registry.documents import TrainingRecord
from transferflow.serving import recorder as recording

CLASSES = ["class_0", "class_1", "class_2"]


def answers(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(3), n).astype(np.float32)
    return probabilities, rng.normal(size=(n, 8)).astype(np.float32)


def record(recorder, version: int, requests: int, seed: int = 0) -> None:
    probabilities, features = answers(requests, seed)
    for i in range(requests):
        recorder.record(version, CLASSES, probabilities[i:i + 1], features[i:i + 1], [("png", 32)])


def documents(bucket: str, name: str, version: int) -> list[dict]:
    keys = [entry["Key"] for entry in storage.list_keys(bucket, windows_prefix(name, version))]
    return [storage.get_json(bucket, key)[0] for key in sorted(keys)]


def test_windows_close_by_requests_and_on_shutdown_one_series_per_version(bucket):
    recorder = recording.Recorder("shapes", 3600, 5, CollectorRegistry(), replica="replica-a")
    recorder.start()
    record(recorder, 1, 12)
    record(recorder, 2, 3)
    recorder.stop()
    first, second = documents(bucket, "shapes", 1), documents(bucket, "shapes", 2)
    assert [(d["part"], d["requests"], d["closed_by"]) for d in first] == [
        (0, 5, "requests"), (1, 5, "requests"), (2, 2, "shutdown")]
    assert [(d["requests"], d["closed_by"], d["replica"]) for d in second] == [(3, "shutdown", "replica-a")]
    assert first[0]["inputs"] == {"formats": {"png": 5}, "sizes": {"<=32": 5}}
    assert sum(first[0]["predicted"].values()) == 5 and sum(first[0]["confidence"]["counts"]) == 5


def test_a_window_closes_when_its_period_ends(bucket):
    recorder = recording.Recorder("shapes", 1, 1000, CollectorRegistry(), replica="replica-a")
    recorder.start()
    try:
        record(recorder, 1, 4)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not documents(bucket, "shapes", 1):
            time.sleep(0.2)
        [written] = documents(bucket, "shapes", 1)  # written while the server is still running
        assert (written["requests"], written["closed_by"]) == (4, "period")
    finally:
        recorder.stop()


def test_replicas_write_side_by_side_and_the_monitor_merges_them(bucket):
    for replica, requests in (("pod-a", 7), ("pod-b", 4)):
        recorder = recording.Recorder("shapes", 3600, 1000, CollectorRegistry(), replica=replica)
        recorder.start()
        record(recorder, 1, requests, seed=len(replica) + requests)
        recorder.stop()
    [(window, keys)] = window_keys("shapes", 1).items()
    merged = read_window("shapes", 1, window, keys)
    assert merged.replicas == ["pod-a", "pod-b"] and merged.sketch.requests == 11
    assert len(merged.sketch.reservoir) == 11


def test_a_full_queue_drops_answers_and_counts_them_instead_of_blocking(bucket, monkeypatch):
    monkeypatch.setattr(recording, "QUEUE_ITEMS", 10)
    metrics = CollectorRegistry()
    recorder = recording.Recorder("shapes", 3600, 1000, metrics, replica="replica-a")
    sending = threading.Thread(target=record, args=(recorder, 1, 25))  # not folding yet: the queue fills
    sending.start()
    sending.join(60)
    assert not sending.is_alive(), "recording blocked the request path"
    assert metrics.get_sample_value("transferflow_serve_monitoring_dropped_total") == 15
    recorder.start()
    recorder.stop()
    [written] = documents(bucket, "shapes", 1)
    assert (written["requests"], written["dropped"]) == (10, 15)


def tiny_classifier(seed: int, classes: int = 3):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="classifier")(x))


def register_on(name: str, seed: int, dataset) -> int:
    """A tiny classifier registered as trained on a prepared dataset (no reference: as before)."""
    from transferflow.training.model import save_to

    uri = f"s3://{storage.bucket_name()}/staging/{name}-{seed}.keras"
    digest, size = save_to(tiny_classifier(seed, len(dataset.class_names)), uri)
    record = TrainingRecord.model_validate({
        "classes": dataset.class_names, "image_size": dataset.image_size,
        "dataset": {"source": dataset.source, "fingerprint": dataset.fingerprint,
                    "prepared_uri": dataset.uri}})
    return Registry().register(name, uri, digest, size, record, f"run-{seed}").version


@pytest.fixture
def prepared(bucket, sample_dataset):
    from transferflow.data import PrepareOptions, prepare_dataset

    return prepare_dataset(str(sample_dataset), PrepareOptions(32, 0.1, 0.1, 0))


def test_an_older_version_gets_its_reference_once_and_it_is_verified(bucket, prepared):
    from transferflow.monitoring.reference import load_reference

    version = register_on("shapes", 1, prepared)
    registry = Registry()
    assert registry.reference_bytes("shapes", version) is None
    reference = load_reference("shapes", version)
    test_and_val = sum(sum(prepared.counts[split].values()) for split in ("test", "val"))
    assert reference.images == test_and_val and len(reference.reservoir) == test_and_val
    entry = registry.metadata("shapes", version)["monitoring"]["reference"]
    assert entry["file"].startswith("monitoring/reference-") and entry["images"] == test_and_val
    again = load_reference("shapes", version, compute=False)  # read, not computed: it is listed now
    np.testing.assert_array_equal(again.reservoir.rows()[2], reference.reservoir.rows()[2])

    key = f"models/shapes/versions/{version:06d}/{entry['file']}"
    storage.put_bytes(bucket, key, b'{"tampered": true}', "application/json")
    with pytest.raises(RegistryError, match="altered after registration"):
        load_reference("shapes", version)


def main(argv: list[str]) -> int:
    """`transferflow ARGV` in this process, leaving the logging handlers as they were (the CLI adds
    one on the stream that capsys closes after the test)."""
    import logging

    from transferflow.cli.main import main as cli

    logger = logging.getLogger("transferflow")
    handlers, level = list(logger.handlers), logger.level
    try:
        return cli(argv)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def test_feedback_list_counts_and_purge_deletes_what_it_said(bucket, capsys):
    for key in ("unlabeled/2026-11-30/a.jpg", "unlabeled/2026-11-30/a.json", "unlabeled/2026-12-02/b.png",
                "unlabeled/2026-12-02/b.json", "labeled/class_1/a.jpg"):
        storage.put_bytes(bucket, f"feedback/shapes/{key}", b"x", "application/octet-stream")
    assert main(["feedback", "list", "shapes"]) == 0
    listed = capsys.readouterr().out
    assert "unlabeled  2026-11-30    1" in listed and "labeled    class_1       1" in listed
    assert main(["feedback", "purge", "shapes", "--before", "2026-12-01"]) == 0
    assert "would delete 2 objects" in capsys.readouterr().out
    assert len(list(storage.list_keys(bucket, "feedback/"))) == 5  # nothing without --yes
    assert main(["feedback", "purge", "shapes", "--before", "2026-12-01", "--yes"]) == 0
    left = sorted(e["Key"].removeprefix("feedback/shapes/") for e in storage.list_keys(bucket, "feedback/"))
    assert left == ["labeled/class_1/a.jpg", "unlabeled/2026-12-02/b.json", "unlabeled/2026-12-02/b.png"]
    assert main(["feedback", "purge", "shapes", "--labeled", "--yes"]) == 0
    assert list(storage.list_keys(bucket, "feedback/")) == []
