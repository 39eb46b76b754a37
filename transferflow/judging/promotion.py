"""The promotion gate: whether a new version is blessed, judged against production on the
same images (TFX Evaluator semantics: an absolute floor, plus "no worse than the last blessed
model" on the same evaluation data, skipped on the first run).

Every check is recorded with its numbers, and the decision's reason names each one:
  floor          test accuracy above a fixed floor, or significantly above the majority-class
                 baseline ("auto")
  class_set      the same classes as production (else refused, unless allow_class_change)
  and on every evaluation set both models were scored on (the test split; the golden set):
  metric         no worse than production on promote_metric, within promote_tolerance
  class_recall   no class's recall drops by more than max_class_regression
  mcnemar        the exact McNemar test does not find the new version worse (p >= mcnemar_alpha)

Boundaries are decided on counts, exactly: accuracy, recall and macro-F1 are ratios of whole
numbers of images, compared as fractions with the thresholds as the decimals the user wrote
(0.1 is 1/10), so a 2-of-20 recall drop is the same decision from 16/20 as from 20/20.

Production is compared only on the test images it never trained or validated on (its recorded
digests, see `comparison_set`); the count left out is recorded as `excluded`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

from pydantic import BaseModel

from transferflow.judging.comparison_set import (
    COMPARISON_SET,
    ComparisonSet,
    describe_comparison_set,
    on_comparison_set,
)
from transferflow.judging.scoring import McNemar, Scored, mcnemar
from transferflow.training.gate import against_baseline


class PromotionAction(StrEnum):
    """What happens to a new version after the promotion gate."""

    PROMOTE = "promote"  # blessed, and production moves to it
    CANDIDATE = "candidate"  # blessed, marked candidate (auto_promote is off)
    NONE = "none"  # not blessed: production unchanged


@dataclass(frozen=True)
class PromotionRule:
    """The thresholds, from RetrainConfig's promote_* fields and their neighbours."""

    min_accuracy: float | str = "auto"
    tolerance: float = 0.0
    metric: str = "accuracy"
    max_class_regression: float = 0.1
    mcnemar_alpha: float = 0.05
    allow_class_change: bool = False
    auto_promote: bool = True

    @classmethod
    def from_config(cls, config) -> PromotionRule:
        return cls(
            config.promote_min_accuracy,
            config.promote_tolerance,
            config.promote_metric,
            config.max_class_regression,
            config.mcnemar_alpha,
            config.allow_class_change,
            config.auto_promote,
        )


@dataclass(frozen=True)
class Champion:
    """Production as the gate sees it: its version, classes, and its answers on the same sets
    the new version was scored on (None when a changed class set makes them meaningless)."""

    version: int
    classes: list[str]
    scored: dict[str, Scored] | None = None
    problem: str | None = None  # why production could not be scored (its artifact failed verification)
    compared_on: dict[str, ComparisonSet] = field(default_factory=dict)  # per set (comparison_set.py)


class PromotionCheck(BaseModel):
    name: str  # floor | class_set | metric:<set> | class_recall:<set> | mcnemar:<set>
    passed: bool
    detail: str
    skipped: bool = False


class Comparison(BaseModel):
    """Both models on one set of images, side by side."""

    images: int
    challenger: dict  # accuracy, macro_f1, recall per class
    champion: dict
    mcnemar: McNemar
    excluded: int | None = None  # images of the set left out: production trained or validated on them


class PromotionDecision(BaseModel):
    """Whether a new version is blessed, what happens to it, and every check behind it."""

    blessed: bool
    action: PromotionAction
    test_accuracy: float
    min_accuracy: float  # the floor applied: fixed, or the majority-class baseline for auto
    floor_rule: str = "fixed"  # fixed | auto (significantly above the majority-class baseline)
    floor_p_value: float | None = None
    tolerance: float
    metric: str = "accuracy"
    production_version: int | None
    production_accuracy: float | None  # production's accuracy on the same test images
    same_dataset: bool | None  # True: both scored on the same images; None: no production version
    checks: list[PromotionCheck] = []
    comparisons: dict[str, Comparison] = {}  # evaluation set ("test", "golden") -> both models
    reason: str


def promotion_gate(
    rule: PromotionRule, challenger: dict[str, Scored], classes: list[str], champion: Champion | None
) -> PromotionDecision:
    """Bless the challenger (scored on "test" and maybe "golden") or not; see the module docstring."""
    test = challenger["test"].metrics
    floor, floor_facts = _floor(rule, test)
    checks = [floor]
    facts = dict(
        test_accuracy=test["accuracy"],
        tolerance=rule.tolerance,
        metric=rule.metric,
        production_version=None,
        production_accuracy=None,
        same_dataset=None,
        **floor_facts,
    )
    comparisons: dict[str, Comparison] = {}
    if champion is None:
        checks.append(
            PromotionCheck(
                name="production",
                passed=True,
                skipped=True,
                detail="no production version yet: comparisons skipped",
            )
        )
    else:
        facts["production_version"] = champion.version
        checks.append(_class_set(rule, classes, champion))
        if champion.problem is not None:
            checks.append(
                PromotionCheck(
                    name="production",
                    passed=False,
                    detail=f"production v{champion.version} could not be scored on the "
                    f"same images: {champion.problem}",
                )
            )
        elif champion.scored is not None:
            for name, scored in champion.scored.items():
                chosen = champion.compared_on.get(name)  # None: every image (a golden set)
                if chosen is not None:
                    checks.append(_comparison_set_check(rule, name, chosen, challenger[name], classes,
                                                        champion.version))
                    if chosen.inconclusive(rule.mcnemar_alpha):
                        continue
                comparisons[name] = _compare(*on_comparison_set(challenger[name], scored, chosen, classes))
                comparisons[name].excluded = chosen.excluded if chosen else None
                checks += _same_images_checks(rule, name, comparisons[name], champion.version)
            if "test" in comparisons:
                facts["production_accuracy"] = comparisons["test"].champion["accuracy"]
            facts["same_dataset"] = True
    blessed = all(check.passed for check in checks)
    action, outcome = _action(rule, blessed, checks)
    reason = "; ".join(check.detail for check in checks) + f" -> {outcome}"
    return PromotionDecision(
        blessed=blessed, action=action, checks=checks, comparisons=comparisons, reason=reason, **facts
    )


def _action(rule: PromotionRule, blessed: bool, checks: list[PromotionCheck]) -> tuple[PromotionAction, str]:
    """What happens to the version, and the words for it. A blessed version whose comparison with
    production was inconclusive (too few unseen images) is marked candidate: a human decides."""
    if not blessed:
        return PromotionAction.NONE, "not blessed: production unchanged"
    if any(check.name.startswith(COMPARISON_SET) and check.skipped for check in checks):
        return PromotionAction.CANDIDATE, ("blessed on the floor alone: marked candidate, not promoted, "
                                           "since it could not be compared with production")
    if not rule.auto_promote:
        return PromotionAction.CANDIDATE, "blessed: marked candidate (auto_promote is off)"
    return PromotionAction.PROMOTE, "blessed: moving production to it"


def _comparison_set_check(rule: PromotionRule, name: str, chosen: ComparisonSet, challenger: Scored,
                          classes: list[str], version: int) -> PromotionCheck:
    skipped, detail = describe_comparison_set(chosen, name, challenger.labels, classes, version,
                                              rule.mcnemar_alpha)
    return PromotionCheck(name=f"{COMPARISON_SET}:{name}", passed=True, skipped=skipped, detail=detail)


def _floor(rule: PromotionRule, test: dict) -> tuple[PromotionCheck, dict]:
    """The absolute floor, and the facts the decision records about it."""
    accuracy = test["accuracy"]
    if rule.min_accuracy == "auto":
        baseline = against_baseline(accuracy, [row["support"] for row in test["per_class"].values()])
        return (
            PromotionCheck(
                name="floor", passed=baseline.beaten, detail=f"test accuracy {baseline.describe(accuracy)}"
            ),
            dict(min_accuracy=baseline.accuracy, floor_rule="auto", floor_p_value=baseline.p_value),
        )
    passed = _exact_accuracy(test) >= _decimal(rule.min_accuracy)
    return (
        PromotionCheck(
            name="floor",
            passed=passed,
            detail=f"test accuracy {accuracy:.4f} {'>=' if passed else '<'} floor {rule.min_accuracy:.4f}",
        ),
        dict(min_accuracy=rule.min_accuracy, floor_rule="fixed"),
    )


def _class_set(rule: PromotionRule, classes: list[str], champion: Champion) -> PromotionCheck:
    added, removed = (
        sorted(set(classes) - set(champion.classes)),
        sorted(set(champion.classes) - set(classes)),
    )
    if not added and not removed:
        return PromotionCheck(
            name="class_set",
            passed=True,
            detail=f"same {len(classes)} classes as production v{champion.version}",
        )
    change = ", ".join(
        part for part in (f"added {added}" if added else "", f"removed {removed}" if removed else "") if part
    )
    if rule.allow_class_change:
        return PromotionCheck(
            name="class_set",
            passed=True,
            detail=f"class set changed from production v{champion.version} ({change}), "
            "allowed by allow_class_change: comparisons with production skipped",
        )
    return PromotionCheck(
        name="class_set",
        passed=False,
        detail=f"class set differs from production v{champion.version} ({change}): refused; "
        "pass --allow-class-change if the change is intended",
    )


def _summary(scored: Scored) -> dict:
    metrics = scored.metrics
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "recall": {name: row["recall"] for name, row in metrics["per_class"].items()},
        "counts": _class_counts(metrics),
    }


def _class_counts(metrics: dict) -> dict[str, list[int]]:
    """Per class [true positives, false positives, false negatives], from the confusion matrix:
    what the exact comparisons are made of."""
    matrix = metrics["confusion_matrix"]
    names = list(metrics["per_class"])
    return {name: [matrix[i][i], sum(row[i] for row in matrix) - matrix[i][i], sum(matrix[i]) - matrix[i][i]]
            for i, name in enumerate(names)}


def _decimal(value: float) -> Fraction:
    """A threshold as the decimal it was written as (0.1 -> 1/10, not the float's 0.1000000000000000055)."""
    return Fraction(repr(float(value)))


def _exact_accuracy(metrics: dict) -> Fraction:
    matrix = metrics["confusion_matrix"]
    return Fraction(sum(matrix[i][i] for i in range(len(matrix))), max(metrics["images"], 1))


def _exact(side: dict, metric: str) -> Fraction:
    """accuracy or macro-F1 of one side of a comparison, as an exact fraction of its counts."""
    counts = side["counts"]
    if metric == "accuracy":
        images = sum(tp + fn for tp, _, fn in counts.values())
        return Fraction(sum(tp for tp, _, _ in counts.values()), max(images, 1))
    present = [(tp, fp, fn) for tp, fp, fn in counts.values() if tp + fn > 0]
    f1 = sum((Fraction(2 * tp, 2 * tp + fp + fn) for tp, fp, fn in present), Fraction(0))
    return f1 / max(len(present), 1)


def _exact_recall(side: dict, cls: str) -> Fraction:
    tp, _, fn = side["counts"][cls]
    return Fraction(tp, tp + fn)


def _compare(challenger: Scored, champion: Scored) -> Comparison:
    if challenger.labels != champion.labels:
        raise ValueError("the two models were not scored on the same images (their labels differ)")
    return Comparison(
        images=len(challenger.labels),
        challenger=_summary(challenger),
        champion=_summary(champion),
        mcnemar=mcnemar(champion.correct, challenger.correct),
    )


def _same_images_checks(
    rule: PromotionRule, name: str, comparison: Comparison, version: int
) -> list[PromotionCheck]:
    where = f"on the same {comparison.images} {name} images"
    new, old = comparison.challenger[rule.metric], comparison.champion[rule.metric]
    holds = (_exact(comparison.challenger, rule.metric)
             >= _exact(comparison.champion, rule.metric) - _decimal(rule.tolerance))
    checks = [
        PromotionCheck(
            name=f"metric:{name}",
            passed=holds,
            detail=f"{name} {rule.metric} {new:.4f} vs production v{version}'s {old:.4f} {where}: "
            f"{'no worse' if holds else 'worse'} {'within' if holds else 'by more than'} "
            f"tolerance {rule.tolerance:.4f}",
        )
    ]
    checks.append(_class_recall(rule, name, comparison, where))
    checks.append(_mcnemar_check(rule, name, comparison.mcnemar, comparison.images))
    return checks


def _class_recall(rule: PromotionRule, name: str, comparison: Comparison, where: str) -> PromotionCheck:
    drops = {
        cls: _exact_recall(comparison.champion, cls) - _exact_recall(comparison.challenger, cls)
        for cls, old in comparison.champion["recall"].items()
        if old is not None and comparison.challenger["recall"].get(cls) is not None
    }
    if not drops:
        return PromotionCheck(
            name=f"class_recall:{name}",
            passed=True,
            skipped=True,
            detail=f"no per-class recall to compare {where}",
        )
    worst = max(drops, key=lambda cls: (drops[cls], cls))
    new, old = comparison.challenger["recall"][worst], comparison.champion["recall"][worst]
    if drops[worst] > _decimal(rule.max_class_regression):
        return PromotionCheck(
            name=f"class_recall:{name}",
            passed=False,
            detail=f"class {worst!r} recall {new:.4f} vs production's {old:.4f} {where}: drops "
            f"{float(drops[worst]):.4f}, more than max_class_regression {rule.max_class_regression:.4f}",
        )
    return PromotionCheck(
        name=f"class_recall:{name}",
        passed=True,
        detail=f"no class's {name} recall drops by more than {rule.max_class_regression:.4f} "
        + (f"(largest drop: {worst!r} {old:.4f} -> {new:.4f})" if drops[worst] > 0 else "(none drops)"),
    )


def _mcnemar_check(rule: PromotionRule, name: str, test: McNemar, images: int) -> PromotionCheck:
    counts = (
        f"production alone right on {test.champion_only}, the new version alone on "
        f"{test.challenger_only} of {images} {name} images"
    )
    if rule.mcnemar_alpha == 0:
        return PromotionCheck(
            name=f"mcnemar:{name}",
            passed=True,
            skipped=True,
            detail=f"McNemar test off (mcnemar_alpha 0; {counts})",
        )
    worse = test.p_worse < rule.mcnemar_alpha
    return PromotionCheck(
        name=f"mcnemar:{name}",
        passed=not worse,
        detail=f"exact McNemar test ({counts}): one-sided p = {test.p_worse:.3g} that the new version is "
        f"worse, {'<' if worse else '>='} alpha {rule.mcnemar_alpha:g}"
        + (": significantly worse" if worse else ""),
    )


def summary_table(comparison: Comparison) -> list[tuple[str, float | None, float | None]]:
    """(measure, production, new version) rows for reports."""
    rows = [
        ("accuracy", comparison.champion["accuracy"], comparison.challenger["accuracy"]),
        ("macro-F1", comparison.champion["macro_f1"], comparison.challenger["macro_f1"]),
    ]
    rows += [
        (f"recall {cls}", old, comparison.challenger["recall"].get(cls))
        for cls, old in comparison.champion["recall"].items()
    ]
    return rows
