"""Temperature scaling applied end to end: fitted on the validation split, folded into the
classifier, saved, registered; the registered model, loaded back and scored again, answers with
the softened probabilities the calibration recorded."""

import numpy as np
import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import load_prepared
from transferflow.judging.scoring import expected_calibration_error, predict
from transferflow.pipeline import phases
from transferflow.pipeline.phases import PhaseOutcome
from transferflow.publishing.stages import calibrate_model
from transferflow.registry import Registry
from transferflow.registry.documents import TrainingRecord


def overconfident_model(classes: int, seed: int = 0):
    """A classifier of the images' mean colour with a sharp softmax (random weights scaled up):
    answers near 0 or 1, many of them wrong."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    layer = model.get_layer("classifier")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 30, bias])
    return model


@pytest.mark.slow
def test_a_fitted_temperature_is_folded_saved_registered_and_answers_so(bucket, sample_dataset):
    from transferflow.training.model import load_model, save_to

    config = RetrainConfig(dataset=str(sample_dataset), image_size=32, model_name="calibrated")
    dataset = phases.download_dataset(config)
    uri = f"s3://{bucket}/staging/overconfident.keras"
    digest, size = save_to(overconfident_model(len(dataset.class_names)), uri)
    final = PhaseOutcome(phase="head", model_uri=uri, sha256=digest, size=size, metrics={})
    calibrated, plan = calibrate_model(config, dataset, final, "run-calibration")
    assert plan.applied and plan.temperature > 1.5, plan.reason
    assert calibrated.model_uri != uri and calibrated.sha256 != digest  # a new, folded artifact

    record = TrainingRecord.model_validate({"classes": dataset.class_names, "image_size": 32})
    version = Registry().register("calibrated", calibrated.model_uri, calibrated.sha256, calibrated.size,
                                  record, "run-calibration").version
    labels, registered = predict(load_model(f"calibrated:{version}"), load_prepared(dataset).splits["val"])
    assert expected_calibration_error(labels, registered) == pytest.approx(plan.val_ece_after, abs=1e-4)
    assert plan.val_ece_after < plan.val_ece_before
    original = predict(overconfident_model(len(dataset.class_names)), load_prepared(dataset).splits["val"])[1]
    np.testing.assert_array_equal(registered.argmax(axis=1), original.argmax(axis=1))  # same answers
    assert registered.max(axis=1).mean() < original.max(axis=1).mean()  # softer
    storage.delete_prefix(bucket, "staging/")
