"""Weights from a URI, through the same path real (ImageNet) weights files take."""

import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.errors import WeightsError
from transferflow.pipeline import phases


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


def normalised(model, images):
    import keras

    layer = next(x for x in model.layers if isinstance(x, keras.layers.Normalization))
    return keras.Model(model.input, layer.output)(images)[0, 0, 0].numpy()


def test_efficientnet_weights_file_reproduces_the_imagenet_input_scaling(tmp_path):
    """Keras adds a weightless 1/sqrt(std) rescaling only when it loads ImageNet weights itself."""
    import keras
    import numpy as np

    from transferflow.training.backbones import IMAGENET_STD_RGB, construct, get_spec

    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array(IMAGENET_STD_RGB, "float32")
    saved = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    next(x for x in saved.layers if isinstance(x, keras.layers.Normalization)).set_weights(
        [mean, std**2, np.array(0)])  # what an ImageNet-built EfficientNet's file holds
    path = tmp_path / "efficientnet_b0.weights.h5"
    saved.save_weights(str(path))

    base = construct(get_spec("efficientnet_b0"), 32, path)
    white = np.full((1, 32, 32, 3), 255.0, "float32")
    np.testing.assert_allclose(normalised(base, white), (1 - mean) / std / np.sqrt(std), rtol=1e-5)


def test_rebuilding_keeps_normalisation_statistics():
    """set_weights alone leaves a Normalization layer computing with its old statistics."""
    import keras
    import numpy as np

    from transferflow.training.backbones import get_spec
    from transferflow.training.model import build_classifier, rebuild_classifier

    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    layer = next(x for x in base.layers if isinstance(x, keras.layers.Normalization))
    layer.set_weights([np.array([0.5, 0.4, 0.3], "float32"), np.array([0.04, 0.09, 0.16], "float32"),
                       np.array(0)])
    layer.finalize_state()
    classifier = build_classifier(base, get_spec("efficientnet_b0"), 3, 0.2)
    rebuilt = rebuild_classifier(classifier, "float32").get_layer("backbone")
    white = np.full((1, 32, 32, 3), 255.0, "float32")
    np.testing.assert_allclose(normalised(rebuilt, white), normalised(base, white), rtol=1e-6)
