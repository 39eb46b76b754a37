"""Fine-tuning on cached activations: the frozen bottom of the backbone runs once; the top blocks and
the head train on its output, and the model staged is the whole classifier with the tuned weights."""

import logging

import numpy as np
import pytest

from tests.conftest import Lines
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import load_prepared
from transferflow.pipeline import phases
from transferflow.training import activations, backbones
from transferflow.training import model as modeling
from transferflow.training.fit import fit_phase

pytestmark = pytest.mark.slow


@pytest.fixture
def logger():
    log, lines = logging.getLogger(f"test-activations-{id(object())}"), Lines()
    log.setLevel(logging.INFO)
    log.addHandler(lines)
    log.lines = lines.lines
    return log


def test_the_cut_is_the_one_tensor_between_the_frozen_bottom_and_the_top():
    import keras

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert activations.cut_layer(activations.find_cut(vgg, ("block4_", "block5_"))) == "block3_pool"
    assert activations.find_cut(vgg, ("",)) is None  # every block fine-tuned: nothing frozen
    resnet = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert activations.cut_layer(activations.find_cut(resnet, ("conv5_",))) == "conv4_block6_out"
    # conv4_block1's shortcut and main path both start inside conv3_block4's output: still one tensor
    assert activations.cut_layer(activations.find_cut(resnet, ("conv4_", "conv5_"))) == "conv3_block4_out"
    # cut models share the classifier's layers: building them leaves its own graph as it was
    top = keras.Model(vgg.get_layer("block3_pool").output, vgg.output)
    assert top.get_layer("block4_conv1") is vgg.get_layer("block4_conv1")
    assert activations.cut_layer(activations.find_cut(vgg, ("block5_",))) == "block4_pool"


def classifier_for(weights, classes: int = 3):
    import keras

    spec = backbones.get_spec("vgg16")
    keras.utils.set_random_seed(0)
    base = backbones.construct(spec, 32, weights)
    classifier = modeling.build_classifier(base, spec, classes, 0.2)
    classifier.get_layer("standardize").adapt_to(np.ones((2, 512), np.float32))
    modeling.unfreeze_top_blocks(classifier, spec, 2)
    return classifier


def test_training_the_top_on_activations_is_training_the_classifier(bucket, sample_dataset, random_weights):
    """Same seed, same batches: the classifier trained end to end on images and the one whose top
    trained on its cached (float32) activations predict the same; float16 activations nearly so."""
    config = RetrainConfig(dataset=str(sample_dataset), weights=str(random_weights), image_size=32)
    data = load_prepared(phases.download_dataset(config))
    (x, y), (vx, vy) = data.splits["train"], data.splits["val"]
    fit = dict(epochs=2, learning_rate=1e-4, batch_size=16, patience=5, seed=0)

    end_to_end = classifier_for(random_weights)
    fit_phase(end_to_end, "fine_tune", (x, y), (vx, vy), **fit)

    predictions = {}
    for dtype in ("float32", "float16"):
        classifier = classifier_for(random_weights)
        models = activations.split_classifier(classifier, activations.find_cut(
            classifier.get_layer("backbone"), ("block4_", "block5_")))
        _, acts = models.bottom.predict(x, verbose=0)
        _, val_acts = models.bottom.predict(vx, verbose=0)
        fit_phase(models.top, "fine_tune", (acts.astype(dtype), y), (val_acts.astype(dtype), vy), **fit)
        predictions[dtype] = classifier.predict(x, verbose=0)  # the whole classifier, on images
    expected = end_to_end.predict(x, verbose=0)
    untrained = classifier_for(random_weights).predict(x, verbose=0)
    assert not np.allclose(expected, untrained, atol=1e-3)  # training changed the answers
    np.testing.assert_allclose(predictions["float32"], expected, atol=1e-4)
    np.testing.assert_allclose(predictions["float16"], expected, atol=1e-2)
    assert (predictions["float16"].argmax(1) == expected.argmax(1)).mean() > 0.95


def run_phases(config: RetrainConfig, run_id: str, logger):
    dataset = phases.download_dataset(config, logger=logger)
    backbone = phases.build_backbone(config, dataset, logger=logger)
    head = phases.train_head(config, dataset, backbone, run_id, logger=logger)
    return dataset, head, phases.fine_tune(config, dataset, head, run_id, logger=logger)


def settings(sample_dataset, random_weights, **overrides) -> RetrainConfig:
    return RetrainConfig(**{"dataset": str(sample_dataset), "weights": str(random_weights), "image_size": 32,
                            "head_epochs": 2,
                            "fine_tune_epochs": 1, "batch_size": 16, "checkpoint_interval_s": 0,
                            **overrides})


def test_fine_tuning_trains_on_the_head_phases_activations_and_stages_the_whole_model(
        bucket, sample_dataset, random_weights, logger):
    config = settings(sample_dataset, random_weights, fine_tune_epochs=2, patience=5)
    dataset, head, fine = run_phases(config, "run-a", logger)
    info = fine.tuned.metrics["activations"]
    assert head.metrics["features"]["activations"]["uri"] == info["uri"]  # computed in the features' pass
    assert info["source"] == "handed over" and info["dtype"] == "float16" and info["shape"] == [4, 4, 256]
    assert any("fine-tuning input: the frozen bottom of vgg16 (up to block3_pool) runs once" in line
               for line in logger.lines)
    location = storage.parse_s3_uri(info["uri"])
    names = {obj["Key"].rsplit("/", 1)[1] for obj in storage.list_keys(bucket, location.key + "/")}
    assert {"manifest.json", "train-00000.tfrecord", "train-labels.npy", "val-00000.tfrecord"} <= names

    staged = modeling.load_from(fine.tuned.model_uri)  # raw pixels in: the whole classifier
    images = load_prepared(dataset).splits["test"][0]
    assert staged.input_shape == (None, 32, 32, 3)
    start, layer = modeling.load_from(head.model_uri), staged.get_layer("backbone").get_layer
    assert not np.allclose(layer("block5_conv3").get_weights()[0],  # tuned
                           start.get_layer("backbone").get_layer("block5_conv3").get_weights()[0])
    np.testing.assert_array_equal(layer("block3_conv3").get_weights()[0],  # frozen
                                  start.get_layer("backbone").get_layer("block3_conv3").get_weights()[0])
    assert staged.predict(images, verbose=0).shape == (len(images), 3)

    # a retry of the same run resumes from its checkpoint, on activations read from object storage
    longer = config.model_copy(update={"fine_tune_epochs": 3})
    resumed = phases.fine_tune(longer, dataset, head, "run-a", logger=logger)
    assert resumed.tuned.metrics["activations"]["source"] == "reused"
    assert resumed.tuned.metrics["activations"]["uri"] == info["uri"]
    assert resumed.tuned.metrics["resumed_from_epoch"] == 2
    assert resumed.tuned.metrics["history"]["loss"][:2] == fine.tuned.metrics["history"]["loss"]


def test_with_augmentation_fine_tuning_runs_end_to_end_and_says_why(bucket, sample_dataset, random_weights,
                                                                     logger):
    _, _, fine = run_phases(settings(sample_dataset, random_weights, head_epochs=1, augment=True), "run-a",
                            logger)
    assert "activations" not in fine.tuned.metrics
    assert any(line.startswith("fine-tuning input: augmentation is on, so every epoch sees new images")
               for line in logger.lines)


@pytest.mark.parametrize("overrides, reason", [
    ({"augment": True}, "augmentation is on"),
    ({"cache_features": False}, "cache_features is off"),
    ({"engine": "ray"}, "engine ray"),
    ({"fine_tune_blocks": "all"}, "every block is fine-tuned"),
    ({"fine_tune_epochs": 0}, "no fine-tuning"),
])
def test_every_reason_to_fine_tune_end_to_end_is_named(overrides, reason):
    config = RetrainConfig(dataset="unused", weights="none", **overrides)
    cut, why = activations.wanted_cut(config, None, backbones.get_spec("vgg16"))
    assert cut is None and why.startswith(reason)
