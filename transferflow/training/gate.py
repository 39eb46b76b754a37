"""Decisions between phases: whether to fine-tune, and whether to keep the result (the
promotion gate, which compares with production, is in promotion.py).

The "auto" thresholds are relative, so they mean the same for 2 classes as for 100: a model
must be significantly better than the trivial baseline (always answering the most frequent
class) on the same images, by a one-sided binomial test at ALPHA.
"""

from __future__ import annotations

from pydantic import BaseModel

ALPHA = 0.01  # "clearly better than chance": a 1-in-100 false alarm


class GateDecision(BaseModel):
    """A yes/no with the numbers behind it, recorded in the metadata and the run log."""

    passed: bool
    metric: str
    value: float | None
    threshold: float | None  # the accuracy compared against: a fixed gate, or the baseline for auto
    reason: str
    rule: str = "fixed"  # fixed | auto (significantly above the majority-class baseline)
    p_value: float | None = None  # auto: P(an accuracy this high | the baseline's skill)
    head_converged: bool | None = None


class Baseline(BaseModel):
    """How a model's accuracy on a split compares with always answering the majority class."""

    accuracy: float  # the majority class's share of the split
    correct: int
    images: int
    p_value: float

    @property
    def beaten(self) -> bool:
        return self.p_value < ALPHA

    def describe(self, accuracy: float) -> str:
        relation = "significantly above" if self.beaten else "not significantly above"
        return (f"{accuracy:.4f} ({self.correct}/{self.images}) is {relation} the majority-class baseline "
                f"{self.accuracy:.4f} (one-sided binomial p = {self.p_value:.2g}, "
                f"{'<' if self.beaten else '>='} {ALPHA})")


def against_baseline(accuracy: float, class_counts: list[int]) -> Baseline:
    """Test `accuracy` on a split with these per-class image counts against the majority baseline."""
    from scipy.stats import binomtest

    images = int(sum(class_counts))
    majority = max(class_counts) / images
    correct = int(round(accuracy * images))
    p_value = float(binomtest(correct, images, majority, alternative="greater").pvalue)
    return Baseline(accuracy=majority, correct=correct, images=images, p_value=p_value)


def head_converged(history: dict[str, list[float]], max_epochs: int) -> tuple[bool, str]:
    """Whether the head phase had converged: early stopping ended it, or its validation loss
    moved by under 1% in the last epoch."""
    losses = history.get("val_loss", [])
    if len(losses) < max_epochs:
        return True, f"early stopping ended it after {len(losses)} of {max_epochs} epochs"
    if len(losses) < 2:
        return False, "it ran a single epoch"
    change = (losses[-2] - losses[-1]) / max(abs(losses[-2]), 1e-12)
    if change < 0.01:
        return True, f"its val_loss changed {-100 * change:+.1f}% in its last epoch"
    return False, f"its val_loss was still falling ({-100 * change:+.1f}% in its last epoch)"


def fine_tune_gate(head_val_accuracy: float, threshold: float | str, fine_tune_epochs: int,
                   val_counts: list[int] | None = None, history: dict | None = None,
                   max_epochs: int | None = None) -> GateDecision:
    """Fine-tune only a head good enough to be worth refining (and only if asked to).

    threshold "auto" (needs `val_counts`): the head must be significantly better than the
    majority-class baseline on the validation split. Below that, the frozen features do not
    separate the classes and fine-tuning would fit noise. Whether the head had converged
    (from `history`) is recorded: a head still improving is fine-tuned all the same, with a
    warning, since fine-tuning starts at a warmed-up low rate and its result is kept only if
    it does not regress.
    """
    if threshold == "auto":
        return _auto_fine_tune_gate(head_val_accuracy, fine_tune_epochs, val_counts or [], history or {},
                                    max_epochs or 0)
    if fine_tune_epochs == 0:
        return GateDecision(passed=False, metric="val_accuracy", value=head_val_accuracy,
                            threshold=threshold, reason="fine_tune_epochs is 0: fine-tuning not requested")
    if head_val_accuracy >= threshold:
        return GateDecision(passed=True, metric="val_accuracy", value=head_val_accuracy,
                            threshold=threshold,
                            reason=f"head val_accuracy {head_val_accuracy:.4f} >= gate "
                            f"{threshold:.4f}: fine-tuning")
    return GateDecision(
        passed=False, metric="val_accuracy", value=head_val_accuracy, threshold=threshold,
        reason=f"head val_accuracy {head_val_accuracy:.4f} < gate {threshold:.4f}: skipping "
        "fine-tuning and keeping the head-only model")


def _auto_fine_tune_gate(accuracy: float, fine_tune_epochs: int, val_counts: list[int], history: dict,
                         max_epochs: int) -> GateDecision:
    baseline = against_baseline(accuracy, val_counts)
    converged, how = head_converged(history, max_epochs)
    facts = dict(metric="val_accuracy", value=accuracy, threshold=baseline.accuracy, rule="auto",
                 p_value=baseline.p_value, head_converged=converged)
    head = f"head val_accuracy {baseline.describe(accuracy)}"
    state = (f"the head converged ({how})" if converged else
             f"WARNING: the head had not converged ({how}); raise --head-epochs for a converged head")
    if fine_tune_epochs == 0:
        return GateDecision(passed=False, reason=f"fine_tune_epochs is 0: fine-tuning not requested; {head}",
                            **facts)
    if not baseline.beaten:
        return GateDecision(passed=False, reason=f"{head}: skipping fine-tuning (the frozen features do not "
                            "separate these classes yet; try more images, another backbone, or "
                            "--fine-tune-gate 0 to fine-tune anyway) and keeping the head-only model",
                            **facts)
    return GateDecision(passed=True, reason=f"{head}; {state}: fine-tuning", **facts)


def keep_fine_tuned(head_val_accuracy: float, tuned_val_accuracy: float) -> GateDecision:
    """Keep the fine-tuned weights only if validation accuracy did not drop."""
    if tuned_val_accuracy >= head_val_accuracy:
        return GateDecision(passed=True, metric="val_accuracy", value=tuned_val_accuracy,
                            threshold=head_val_accuracy,
                            reason=f"fine-tuned val_accuracy {tuned_val_accuracy:.4f} >= head "
                            f"{head_val_accuracy:.4f}: keeping the fine-tuned model")
    return GateDecision(passed=False, metric="val_accuracy", value=tuned_val_accuracy,
                        threshold=head_val_accuracy,
                        reason=f"fine-tuned val_accuracy {tuned_val_accuracy:.4f} < head "
                        f"{head_val_accuracy:.4f}: regressed, keeping the head-only model")
