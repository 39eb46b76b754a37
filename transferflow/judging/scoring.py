"""How good a classifier is on a set of labelled images: accuracy, macro-F1, per-class
precision and recall, top-k accuracy, the confusion matrix and the expected calibration error,
plus the paired McNemar test that compares two models on the same images.

scikit-learn computes the classification metrics (its conventions, e.g. zero_division, are the
ones users know); scipy's exact binomial test is McNemar's exact test. Plain NumPy otherwise:
no Keras here, except in `predict`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On Calibration of Modern NNs")
TOP_K = (3, 5)


class Scored(BaseModel):
    """A model's answers on a set of images, kept beside its metrics so that another model's
    answers on the same images can be compared with them image by image."""

    metrics: dict  # a registry TestMetrics document
    labels: list[int]
    predicted: list[int]

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.predicted) == np.asarray(self.labels)


def predict(model, split, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(labels, class probabilities) of a model on a split ((x, y) arrays or a streamed split)."""
    from transferflow.training.fit import split_dataset, split_labels

    probabilities = model.predict(split_dataset(split, batch_size, False, 0), verbose=0)
    return split_labels(split).astype(np.int64), np.asarray(probabilities, np.float64)


def score(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Every metric of one model on one set of images, as a TestMetrics document."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels, probabilities = np.asarray(labels), np.asarray(probabilities, np.float64)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    per_class = {}
    for index, name in enumerate(class_names):
        present = support[index] > 0
        per_class[name] = {
            "accuracy": float(recall[index]) if present else None,
            "precision": float(precision[index]) if (predicted == index).any() else None,
            "recall": float(recall[index]) if present else None,
            "f1": float(f1[index]) if present else None,
            "support": int(support[index]),
        }
    present_classes = [i for i in indices if support[i] > 0]
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else None,
        "images": int(len(labels)),
        "per_class": per_class,
        # Over the classes present in these images: a class absent from a golden set is not a 0.
        "macro_f1": float(
            f1_score(labels, predicted, labels=present_classes, average="macro", zero_division=0)
        )
        if len(labels)
        else None,
        "top_k": top_k_accuracies(labels, probabilities),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "ece": expected_calibration_error(labels, probabilities),
    }


def scored(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str], **extra) -> Scored:
    """`score` plus the per-image answers."""
    metrics = {**score(labels, probabilities, class_names), **extra}
    return Scored(
        metrics=metrics,
        labels=np.asarray(labels).tolist(),
        predicted=np.asarray(probabilities).argmax(axis=1).tolist(),
    )


def top_k_accuracies(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """Share of images whose class is among the k most probable, for k in TOP_K below the class count."""
    classes = probabilities.shape[1]
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    return {
        str(k): float((ranked[:, :k] == np.asarray(labels)[:, None]).any(axis=1).mean())
        for k in TOP_K
        if k < classes and len(labels)
    }


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """Sum over confidence bins of |accuracy - mean confidence|, weighted by the bin's share of images.

    0 means that among the images answered with 80% confidence, 80% are right, and so on.
    """
    if not len(labels):
        return None
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first.
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def negative_log_likelihood(labels: np.ndarray, probabilities: np.ndarray) -> float:
    chosen = probabilities[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(chosen, 1e-12, 1.0)).mean())


class McNemar(BaseModel):
    """The exact McNemar test on paired answers: only the images exactly one model got right count."""

    champion_only: int  # images production got right and the new version got wrong
    challenger_only: int  # images the new version got right and production got wrong
    p_worse: float  # one-sided: P(at least champion_only such images | both models equally good)
    p_two_sided: float


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> McNemar:
    """Is the challenger significantly worse than the champion on the same images?

    Under the null hypothesis that both are equally good, each discordant image is a fair coin:
    champion_only ~ Binomial(discordant, 1/2). The exact (binomial) form, not the chi-square
    approximation, since promotions are often decided on a few hundred images.
    """
    from scipy.stats import binomtest

    champion_correct, challenger_correct = (
        np.asarray(champion_correct, bool),
        np.asarray(challenger_correct, bool),
    )
    if champion_correct.shape != challenger_correct.shape:
        raise ValueError(
            f"McNemar needs answers on the same images: {champion_correct.shape} vs "
            f"{challenger_correct.shape}"
        )
    champion_only = int((champion_correct & ~challenger_correct).sum())
    challenger_only = int((challenger_correct & ~champion_correct).sum())
    discordant = champion_only + challenger_only
    if discordant == 0:
        return McNemar(champion_only=0, challenger_only=0, p_worse=1.0, p_two_sided=1.0)
    worse = binomtest(champion_only, discordant, 0.5, alternative="greater").pvalue
    both = binomtest(champion_only, discordant, 0.5, alternative="two-sided").pvalue
    return McNemar(
        champion_only=champion_only,
        challenger_only=challenger_only,
        p_worse=float(worse),
        p_two_sided=float(both),
    )
