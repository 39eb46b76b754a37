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


class PromotionDecision(BaseModel):
    """Whether a new version is blessed (TFX Evaluator semantics), and what happens to it."""

    blessed: bool
    action: str  # promote | candidate | none
    test_accuracy: float
    min_accuracy: float
    tolerance: float
    production_version: int | None
    production_accuracy: float | None
    same_dataset: bool | None  # None when there is no production version
    reason: str


def promotion_gate(test_accuracy: float, fingerprint: str, min_accuracy: float, tolerance: float,
                   auto_promote: bool, production: tuple[int, dict] | None) -> PromotionDecision:
    """Blessed when test accuracy clears the floor and is no worse than production's own recorded
    test accuracy by more than `tolerance` (skipped when nothing is in production yet)."""
    facts = dict(test_accuracy=test_accuracy, min_accuracy=min_accuracy, tolerance=tolerance,
                 production_version=None, production_accuracy=None, same_dataset=None)
    reasons = []
    blessed = test_accuracy >= min_accuracy
    reasons.append(f"test accuracy {test_accuracy:.4f} {'>=' if blessed else '<'} floor {min_accuracy:.4f}")
    if production is None:
        reasons.append("no production version yet: baseline check skipped")
    else:
        version, meta = production
        recorded = meta["metrics"]["test"]["accuracy"]
        same = meta["dataset"]["fingerprint"] == fingerprint
        facts.update(production_version=version, production_accuracy=recorded, same_dataset=same)
        holds = test_accuracy >= recorded - tolerance
        blessed = blessed and holds
        reasons.append(f"{'no worse than' if holds else 'worse than'} production v{version}'s {recorded:.4f} "
                       f"{'within' if holds else 'by more than'} tolerance {tolerance:.4f}")
        if not same:
            theirs = meta["dataset"]["fingerprint"][:12]
            reasons.append(f"note: production was evaluated on dataset {theirs}, this version on "
                           f"{fingerprint[:12]}: the accuracies are not directly comparable")
    action = ("promote" if auto_promote else "candidate") if blessed else "none"
    outcome = {"promote": "blessed: moving production to it",
               "candidate": "blessed: marked candidate (auto_promote is off)",
               "none": "not blessed: production unchanged"}[action]
    return PromotionDecision(blessed=blessed, action=action, reason="; ".join(reasons) + f" -> {outcome}",
                             **facts)
