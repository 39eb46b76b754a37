"""Weights from a URI, through the same path real (ImageNet) weights files take."""

import pytest

from transferflow import phases, storage
from transferflow.config import RetrainConfig
from transferflow.errors import WeightsError


def test_weights_load_from_s3(bucket, random_weights):
    storage.upload_file(random_weights, bucket, "weights/vgg16.weights.h5")
    config = RetrainConfig(dataset="x", weights=f"s3://{bucket}/weights/vgg16.weights.h5")
    ref = phases.build_backbone(config)
    assert ref.name == "vgg16" and ref.parameters == 14_714_688
    assert ref.weights_sha256 == storage.sha256_file(random_weights)


def test_weights_that_do_not_fit_are_a_clear_error(tmp_path):
    import keras

    wrong = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "tiny.weights.h5"
    wrong.save_weights(str(path))
    with pytest.raises(WeightsError, match="tiny.weights.h5 does not fit backbone vgg16"):
        phases.build_backbone(RetrainConfig(dataset="x", weights=str(path)))


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="nothing.weights.h5 does not exist"):
        phases.build_backbone(RetrainConfig(dataset="x", weights=str(tmp_path / "nothing.weights.h5")))


def test_missing_s3_weights_are_named(bucket):
    uri = f"s3://{bucket}/weights/absent.weights.h5"
    with pytest.raises(WeightsError, match=f"cannot fetch weights {uri}"):
        phases.build_backbone(RetrainConfig(dataset="x", weights=uri))
