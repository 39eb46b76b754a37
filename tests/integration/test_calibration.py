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

# Three classes of flat-coloured images whose colours overlap: class k's colour (on Keras's [-1, 1]
# scale) is MEANS[k] plus Gaussian noise of SPREAD, so the best possible classifier is right about
# 80% of the time, not always, whatever the split.
MEANS = np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.3]])
SPREAD = 0.2
OVERCONFIDENCE = 4.0


def overlapping_colours(folder, per_class: int = 40, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, mean in enumerate(MEANS):
        (folder / f"colour_{k}").mkdir(parents=True)
        for i in range(per_class):
            colour = np.clip((mean + rng.normal(0, SPREAD, 3) + 1) * 127.5, 0, 255).astype(np.uint8)
            Image.fromarray(np.tile(colour, (32, 32, 1))).save(folder / f"colour_{k}" / f"{i:03d}.png")
    return folder


def overconfident_model(classes: int = 3):
    """The Bayes classifier of these colours (a linear model of the images' mean colour) with its
    logits multiplied by OVERCONFIDENCE: it ranks the classes as well as anything can, and its
    answers are far too sure, so a fitted temperature near OVERCONFIDENCE calibrates it."""
    import keras

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    # equal spreads and equal |means|: the Bayes logits are MEANS @ x / SPREAD^2 (the constant cancels)
    model.get_layer("classifier").set_weights([OVERCONFIDENCE * MEANS.T / SPREAD**2, np.zeros(classes)])
    return model


@pytest.mark.slow
def test_a_fitted_temperature_is_folded_saved_registered_and_answers_so(bucket, tmp_path):
    from transferflow.training.model import load_model, save_to

    config = RetrainConfig(dataset=str(overlapping_colours(tmp_path / "colours")), image_size=32,
                           model_name="calibrated", val_fraction=0.3)
    dataset = phases.download_dataset(config)
    uri = f"s3://{bucket}/staging/overconfident.keras"
    digest, size = save_to(overconfident_model(len(dataset.class_names)), uri)
    final = PhaseOutcome(phase="head", model_uri=uri, sha256=digest, size=size, metrics={})
    calibrated, plan = calibrate_model(config, dataset, final, "run-calibration")
    assert plan.applied and 1.5 < plan.temperature < 15, plan.reason  # near OVERCONFIDENCE, not at a bound
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
