"""Decisions between phases: whether to fine-tune, and whether to keep the result."""

from __future__ import annotations

from pydantic import BaseModel


class GateDecision(BaseModel):
    """A yes/no with the numbers behind it, recorded in the metadata and the run log."""

    passed: bool
    metric: str
    value: float | None
    threshold: float | None
    reason: str


def fine_tune_gate(head_val_accuracy: float, threshold: float, fine_tune_epochs: int) -> GateDecision:
    """Fine-tune only a head good enough to be worth refining (and only if asked to)."""
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
