"""Judging a model: how good it is, on which images, and whether it may replace production.

    scoring         accuracy, macro-F1, per-class results, top-k, calibration error, McNemar's test
    evaluation      scoring on prepared datasets: a run's test split, a model's golden set
    comparison_set  the images production is compared on (none it trained on)
    promotion       the promotion gate against production
    calibration     temperature scaling fitted on the validation split
"""

from transferflow.judging.calibration import calibration_plan, fit_temperature, fold_temperature
from transferflow.judging.comparison_set import COMPARISON_SET, ComparisonSet, comparison_set
from transferflow.judging.evaluation import (
    check_golden_classes,
    evaluate_reference,
    golden_ref,
    reproduce_evaluation,
    score_model,
    score_on_golden,
    store_golden,
)
from transferflow.judging.promotion import (
    Comparison,
    PromotionAction,
    PromotionCheck,
    PromotionDecision,
    PromotionRule,
    promotion_gate,
)
from transferflow.judging.scoring import McNemar, Scored, mcnemar, predict, score, scored

__all__ = [
    "COMPARISON_SET", "ComparisonSet", "Comparison", "McNemar", "PromotionAction", "PromotionCheck",
    "PromotionDecision", "PromotionRule", "Scored", "calibration_plan", "check_golden_classes",
    "comparison_set", "evaluate_reference", "fit_temperature", "fold_temperature", "golden_ref", "mcnemar",
    "predict", "promotion_gate", "reproduce_evaluation", "score", "score_model", "score_on_golden", "scored",
    "store_golden",
]
