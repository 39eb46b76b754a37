"""Datasets above stream_threshold_mb: sharded TFRecord in S3, streamed by tf.data."""

import logging

import numpy as np
import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import PrepareOptions, load_prepared, prepare_dataset, records
from transferflow.errors import DatasetError
from transferflow.pipeline import phases
from transferflow.publishing import stages as publishing
from transferflow.training.fit import split_dataset, split_labels

IN_MEMORY = PrepareOptions(image_size=32, val_fraction=0.2, test_fraction=0.2, seed=3)
STREAMED = PrepareOptions(**{**IN_MEMORY.__dict__, "stream_threshold_mb": 0})


def batches(split, shuffle: bool, seed: int = 0):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in split_dataset(split, 7, shuffle, seed)], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(records, "SHARD_BYTES", 20 * 32 * 32 * 3)  # 20 images a shard: several shards


def test_streamed_and_in_memory_paths_give_the_same_examples(bucket, sample_dataset, small_shards):
    memory = prepare_dataset(str(sample_dataset), IN_MEMORY)
    streamed = prepare_dataset(str(sample_dataset), STREAMED)
    assert (memory.format, streamed.format) == ("npz", "tfrecord")
    assert streamed.fingerprint == memory.fingerprint and streamed.counts == memory.counts
    assert len(streamed.shards["train"]) > 1
    a, b = load_prepared(memory), load_prepared(streamed)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(split_labels(a.splits[split]), split_labels(b.splits[split]))
        x_memory, y_memory = batches(a.splits[split], shuffle=False)
        x_stream, y_stream = batches(b.splits[split], shuffle=False)
        np.testing.assert_array_equal(x_stream, x_memory)  # same images, same order
        np.testing.assert_array_equal(y_stream, y_memory)
    x_shuffled, y_shuffled = batches(b.splits["train"], shuffle=True, seed=5)
    again = batches(b.splits["train"], shuffle=True, seed=5)[1]
    assert not np.array_equal(y_shuffled, split_labels(b.splits["train"]))  # shuffled ...
    np.testing.assert_array_equal(np.sort(y_shuffled), np.sort(split_labels(b.splits["train"])))  # ... all
    np.testing.assert_array_equal(again, y_shuffled)  # and the same seed gives the same order
    assert prepare_dataset(str(sample_dataset), STREAMED) == streamed  # reused, not rewritten


def test_a_streamed_dataset_trains_and_evaluates(bucket, sample_dataset, random_weights):
    config = RetrainConfig(dataset=str(sample_dataset), weights=str(random_weights),
                           image_size=32, head_epochs=2,
                           head_learning_rate=1e-2, fine_tune_epochs=1, batch_size=16, stream_threshold_mb=0)
    quiet = logging.getLogger("test-streaming")
    dataset = phases.download_dataset(config, logger=quiet)
    assert dataset.format == "tfrecord"
    backbone = phases.build_backbone(config, logger=quiet)
    head = phases.train_head(config, dataset, backbone, "run-s", logger=quiet)  # cached features
    tuned = phases.fine_tune(config, dataset, head, "run-s", logger=quiet)
    assert tuned.tuned.metrics["epochs_run"] == 1
    # the top blocks trained on the frozen bottom's activations, too large (threshold 0) to hold:
    # written as the head's feature pass computed them, streamed back from the store
    cached = tuned.tuned.metrics["activations"]
    assert cached["streamed"] and cached["source"] == "reused"
    assert head.metrics["features"]["activations"]["streamed"]
    test = publishing.evaluate_model(config, dataset, tuned.chosen.model_uri, logger=quiet).test.metrics
    assert test["images"] == sum(dataset.counts["test"].values())
    assert len(test["confusion_matrix"]) == len(dataset.class_names)  # every metric, streamed too


def test_too_many_bad_images_leave_no_shards_behind(bucket, sample_dataset, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(sample_dataset, root)
    for index in range(3):
        (root / "class_0" / f"zz_bad{index}.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="3 of 93 images"):
        prepare_dataset(str(root), STREAMED)
    assert list(storage.list_keys(bucket, "datasets/")) == []
