"""Temperature scaling (Guo et al. 2017): one number T, fitted on the validation split, that
divides the classifier's logits so that its confidence matches how often it is right.

Fine-tuned networks are usually over-confident. Dividing the logits by T > 1 softens every
answer without changing any of them (argmax is unchanged, so accuracy is too). The classifier
is one Dense layer with a softmax, so T folds into it exactly: softmax((Wx + b) / T) is the
layer with kernel W/T and bias b/T. The registered model then needs no extra layer and no code.
"""

from __future__ import annotations

import numpy as np

from transferflow.judging.scoring import expected_calibration_error, negative_log_likelihood
from transferflow.registry.documents import Calibration

CLASSIFIER_LAYER = "classifier"
BOUNDS = (0.05, 20.0)  # T outside this means something else is wrong: no softmax to speak of


def with_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T), from the probabilities softmax(logits) (log p = logits - constant)."""
    scaled = np.log(np.clip(probabilities, 1e-30, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The T that minimises the negative log-likelihood of the labels (a 1-D convex problem in log T)."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, with_temperature(probabilities, np.exp(log_t))),
        bounds=tuple(np.log(BOUNDS)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(found.x))


def calibration_plan(labels: np.ndarray, probabilities: np.ndarray) -> Calibration:
    """Fit T on validation answers; apply it only if the calibration error does not get worse.

    T minimises the likelihood, not the binned error, so on a small validation split it can
    nudge the error up; then the model is kept as it was, and the record says so. When every
    validation answer is right, the likelihood has no maximum at a finite T (sharpening always
    helps it), so nothing is fitted.
    """
    if (probabilities.argmax(axis=1) == labels).all():
        ece, nll = (
            expected_calibration_error(labels, probabilities),
            negative_log_likelihood(labels, probabilities),
        )
        return Calibration(
            applied=False,
            val_ece_before=ece,
            val_ece_after=ece,
            val_nll_before=nll,
            val_nll_after=nll,
            reason=f"all {len(labels)} validation images are answered correctly: the "
            "likelihood then keeps rising as the temperature falls, so there is no temperature to "
            "estimate; not applied",
        )
    temperature = fit_temperature(labels, probabilities)
    before = expected_calibration_error(labels, probabilities)
    scaled = with_temperature(probabilities, temperature)
    after = expected_calibration_error(labels, scaled)
    facts = dict(
        temperature=temperature,
        val_ece_before=before,
        val_nll_before=negative_log_likelihood(labels, probabilities),
    )
    if after <= before:
        return Calibration(
            applied=True,
            val_ece_after=after,
            val_nll_after=negative_log_likelihood(labels, scaled),
            reason=f"temperature {temperature:.3f} fitted on {len(labels)} validation images: "
            f"calibration error {before:.4f} -> {after:.4f}",
            **facts,
        )
    return Calibration(
        applied=False,
        val_ece_after=before,
        val_nll_after=facts["val_nll_before"],
        reason=f"temperature {temperature:.3f} would raise the validation calibration error "
        f"{before:.4f} -> {after:.4f}: not applied",
        **facts,
    )


def fold_temperature(model, temperature: float) -> None:
    """Divide the classifier layer's kernel and bias by T, in place."""
    layer = model.get_layer(CLASSIFIER_LAYER)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel / temperature, bias / temperature])
