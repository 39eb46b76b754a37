"""Metrics, calibration and the McNemar test against independent references."""

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from transferflow.judging.calibration import calibration_plan, fit_temperature, with_temperature
from transferflow.judging.scoring import expected_calibration_error, mcnemar, score


def exact_mcnemar_reference(b: int, c: int) -> tuple[float, float]:
    """McNemar's exact test from its definition, in exact rational arithmetic: with n = b + c
    discordant pairs, b ~ Binomial(n, 1/2). One-sided P(X >= b); two-sided 2 * P(X <= min(b, c)),
    capped at 1 (the form statsmodels' mcnemar(exact=True) computes)."""
    n = b + c
    pmf = [Fraction(comb(n, k), 2**n) for k in range(n + 1)]
    return float(sum(pmf[b:])), float(min(1, 2 * sum(pmf[: min(b, c) + 1])))


def pairs(b: int, c: int, both_right: int = 7, both_wrong: int = 3):
    """Answers with b images only the champion got right and c only the challenger got right."""
    champion = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    challenger = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(champion), np.array(challenger)


@pytest.mark.parametrize("b,c", [(0, 0), (1, 0), (0, 5), (3, 3), (9, 1), (12, 2), (25, 10), (60, 41)])
def test_mcnemar_matches_the_exact_reference_on_fixed_tables(b, c):
    result = mcnemar(*pairs(b, c))
    worse, two_sided = exact_mcnemar_reference(b, c)
    assert (result.champion_only, result.challenger_only) == (b, c)
    assert result.p_worse == pytest.approx(worse, rel=1e-9)
    assert result.p_two_sided == pytest.approx(two_sided, rel=1e-9)


def test_mcnemar_matches_published_values():
    # The exact two-sided p for (b, c) = (1, 9) is 2 * 11/1024 = 0.021484375 (statsmodels gives the same).
    assert mcnemar(*pairs(1, 9)).p_two_sided == pytest.approx(0.021484375)
    assert mcnemar(*pairs(9, 1)).p_worse == pytest.approx(11 / 1024)


def test_mcnemar_needs_the_same_images():
    with pytest.raises(ValueError, match="same images"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_score_gives_every_metric_with_sklearn_conventions():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    probabilities = np.eye(4)[predicted] * 0.7 + 0.075  # 4 classes, the last absent from the images
    result = score(labels, probabilities, ["a", "b", "c", "d"])
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["per_class"]["a"] == {
        "accuracy": pytest.approx(2 / 3),
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert result["per_class"]["c"]["recall"] == 0.0 and result["per_class"]["c"]["precision"] is None
    assert result["per_class"]["d"]["recall"] is None  # absent: no recall, rather than a 0
    # macro-F1 over the three classes present: a 0.8, b 2/3 (precision 2/4, recall 1), c 0
    assert result["per_class"]["b"]["f1"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert result["confusion_matrix"] == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert result["top_k"] == {"3": 1.0}  # k=5 is not below 4 classes
    assert result["ece"] == pytest.approx(abs(4 / 6 - 0.775))


def test_ece_is_zero_when_confidence_matches_accuracy():
    labels = np.array([0, 0, 0, 0, 1] * 20)
    probabilities = np.tile([0.8, 0.2], (100, 1))  # always "0" with 80% confidence, right 80% of the time
    assert expected_calibration_error(labels, probabilities) == pytest.approx(0.0, abs=1e-12)


def overconfident(seed=0, images=600, classes=5):
    """Answers right 70% of the time, each given with about 97% confidence."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, images)
    predicted = np.where(
        rng.random(images) < 0.7, labels, (labels + rng.integers(1, classes, images)) % classes
    )
    logits = rng.normal(0, 0.5, (images, classes))
    logits[np.arange(images), predicted] += 6.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_temperature_scaling_softens_an_overconfident_model_and_lowers_its_error():
    labels, probabilities = overconfident()
    temperature = fit_temperature(labels, probabilities)
    assert temperature > 1.5
    scaled = with_temperature(probabilities, temperature)
    assert (scaled.argmax(axis=1) == probabilities.argmax(axis=1)).all()  # the answers do not change
    plan = calibration_plan(labels, probabilities)
    assert plan.applied and plan.val_ece_after < plan.val_ece_before / 3
    assert plan.val_nll_after < plan.val_nll_before


def test_a_fitted_temperature_that_would_raise_the_error_is_not_applied():
    """12 validation answers where the likelihood's best temperature (1.34) raises the binned
    calibration error: the plan says so and keeps the model as it is."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 12)
    confidence = rng.uniform(0.55, 0.99, 12)
    predicted = np.where(rng.random(12) < 0.75, labels, 1 - labels)
    probabilities = np.zeros((12, 2))
    probabilities[np.arange(12), predicted] = confidence
    probabilities[np.arange(12), 1 - predicted] = 1 - confidence
    temperature = fit_temperature(labels, probabilities)
    before = expected_calibration_error(labels, probabilities)
    assert expected_calibration_error(labels, with_temperature(probabilities, temperature)) > before + 0.05
    plan = calibration_plan(labels, probabilities)
    assert not plan.applied and plan.temperature == pytest.approx(temperature)
    assert plan.val_ece_before == plan.val_ece_after == pytest.approx(before)
    assert "would raise the validation calibration error" in plan.reason and "not applied" in plan.reason


def test_the_temperature_folds_into_a_keras_classifier_exactly():
    import keras

    from transferflow.judging.calibration import fold_temperature

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classifier")(inputs))
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    before = model.predict(x, verbose=0)
    fold_temperature(model, 2.5)
    after = model.predict(x, verbose=0)
    np.testing.assert_allclose(after, with_temperature(before.astype(np.float64), 2.5), atol=1e-5)


def test_no_temperature_is_fitted_when_every_validation_answer_is_right():
    labels = np.array([0, 1, 2] * 4)
    probabilities = np.full((12, 3), 0.2)
    probabilities[np.arange(12), labels] = 0.6  # right every time, yet only 60% confident
    plan = calibration_plan(labels, probabilities)
    assert not plan.applied and plan.temperature == 1.0 and "answered correctly" in plan.reason
    assert plan.val_ece_after == plan.val_ece_before == pytest.approx(0.4)
