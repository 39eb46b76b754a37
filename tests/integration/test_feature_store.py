"""Backbone features computed once per dataset/backbone/weights/size, kept in S3, reused."""

import logging

import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.pipeline import phases


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def logger():
    log = logging.getLogger(f"test-features-{id(object())}")
    log.setLevel(logging.INFO)
    handler = Collect()
    log.addHandler(handler)
    log.lines = handler.lines
    return log


def head_run(config: RetrainConfig, run_id: str, logger) -> phases.PhaseOutcome:
    dataset = phases.download_dataset(config, logger=logger)
    backbone = phases.build_backbone(config, logger=logger)
    return phases.train_head(config, dataset, backbone, run_id, logger=logger)


def config_for(sample_dataset, random_weights, **overrides) -> RetrainConfig:
    return RetrainConfig(**{"dataset": str(sample_dataset), "weights": str(random_weights), "image_size": 32,
                            "head_epochs": 2,
                            "head_learning_rate": 1e-2, "batch_size": 16, **overrides})


def test_a_rerun_with_another_head_reuses_the_stored_features(bucket, sample_dataset, random_weights, logger):
    first = head_run(config_for(sample_dataset, random_weights), "run-a", logger)
    features = first.metrics["features"]
    assert features["source"] == "computed" and features["uri"].startswith(f"s3://{bucket}/features/")
    prefix = storage.parse_s3_uri(features["uri"]).key
    names = sorted(obj["Key"].rsplit("/", 1)[1] for obj in storage.list_keys(bucket, prefix + "/"))
    assert names == ["manifest.json", "train-00000.npy", "val-00000.npy"]
    assert first.metrics["compute"]["precision"] == "float32"  # a CPU: mixed precision would be slower
    assert any(line.startswith("compute: precision float32, XLA off") for line in logger.lines)

    second = head_run(config_for(sample_dataset, random_weights, head_learning_rate=3e-3, dropout=0.5),
                      "run-b", logger)
    assert second.metrics["features"] == {"source": "reused", "uri": features["uri"]}
    assert any("reusing backbone features" in line for line in logger.lines)


def test_other_weights_or_size_get_their_own_features(bucket, sample_dataset, random_weights, logger):
    first = head_run(config_for(sample_dataset, random_weights), "run-a", logger)
    other = head_run(config_for(sample_dataset, "none"), "run-b", logger)
    assert other.metrics["features"]["source"] == "computed"
    assert other.metrics["features"]["uri"] != first.metrics["features"]["uri"]


def test_damaged_features_are_recomputed_not_trusted(bucket, sample_dataset, random_weights, logger):
    first = head_run(config_for(sample_dataset, random_weights), "run-a", logger)
    location = storage.parse_s3_uri(first.metrics["features"]["uri"])
    storage.put_bytes(location.bucket, f"{location.key}/train-00000.npy", b"garbage", "text/plain")
    second = head_run(config_for(sample_dataset, random_weights), "run-b", logger)
    assert second.metrics["features"]["source"] == "computed"
    assert second.metrics["val_accuracy"] == pytest.approx(first.metrics["val_accuracy"])


def test_augmentation_trains_end_to_end_and_says_so(bucket, sample_dataset, random_weights, logger):
    config = config_for(sample_dataset, random_weights, augment=True, head_epochs=1)
    outcome = head_run(config, "run-a", logger)
    assert "features" not in outcome.metrics
    assert any("augmentation is on" in line for line in logger.lines)
    assert list(storage.list_keys(bucket, "features/")) == []
