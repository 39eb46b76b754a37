"""The promotion rule on answers whose every image is known: the floor, the class set, and the
same-images checks (metric, per-class recall, McNemar)."""

import numpy as np

from transferflow.judging.promotion import Champion, PromotionRule, promotion_gate
from transferflow.judging.scoring import scored

CLASSES = ["cat", "dog", "fox"]


def answers(labels, predicted, classes=CLASSES):
    """A Scored whose predictions are exactly `predicted` (one-hot-ish probabilities)."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    probabilities = np.full((len(labels), len(classes)), 0.1 / (len(classes) - 1))
    probabilities[np.arange(len(labels)), predicted] = 0.9
    return scored(labels, probabilities, classes)


LABELS = [0] * 20 + [1] * 20 + [2] * 20


def flipped(wrong: dict[int, int]):
    """Predictions equal to LABELS except for {image index: predicted class}."""
    predicted = list(LABELS)
    for index, cls in wrong.items():
        predicted[index] = cls
    return predicted


def test_the_first_version_is_judged_on_the_floor_alone():
    decision = promotion_gate(
        PromotionRule(min_accuracy=0.5), {"test": answers(LABELS, LABELS)}, CLASSES, None
    )
    assert decision.blessed and decision.action == "promote"
    assert "no production version yet" in decision.reason and decision.same_dataset is None


def test_the_auto_floor_is_relative_to_the_test_split():
    weak = flipped({i: (LABELS[i] + 1) % 3 for i in range(0, 60, 2)})  # 50% right on 3 balanced classes
    decision = promotion_gate(PromotionRule(), {"test": answers(LABELS, weak)}, CLASSES, None)
    assert decision.blessed and decision.floor_rule == "auto" and abs(decision.min_accuracy - 1 / 3) < 1e-9
    coin = flipped({i: (LABELS[i] + 1) % 3 for i in range(60) if i % 3})  # 33%: chance
    refused = promotion_gate(PromotionRule(), {"test": answers(LABELS, coin)}, CLASSES, None)
    assert not refused.blessed and "not significantly above the majority-class baseline" in refused.reason


def test_better_on_average_but_one_class_collapsed_is_refused_naming_the_class():
    # Production: 6 dogs and 6 foxes wrong, all cats right (48/60). New: every dog and fox right,
    # but 5 of 20 cats called dogs (55/60): better on average, cat recall 1.00 -> 0.75.
    champion = flipped({**{i: 2 for i in range(20, 26)}, **{i: 1 for i in range(40, 46)}})
    challenger = flipped({i: 1 for i in range(5)})
    decision = promotion_gate(
        PromotionRule(),
        {"test": answers(LABELS, challenger)},
        CLASSES,
        Champion(3, CLASSES, {"test": answers(LABELS, champion)}),
    )
    assert not decision.blessed and decision.action == "none"
    failed = [check.name for check in decision.checks if not check.passed]
    assert failed == ["class_recall:test"]
    assert "class 'cat' recall 0.7500 vs production's 1.0000" in decision.reason
    assert (
        decision.comparisons["test"].challenger["accuracy"]
        > decision.comparisons["test"].champion["accuracy"]
    )


def test_compared_on_the_same_images_a_better_model_is_promoted_whatever_production_recorded():
    # A harder test split: the new version gets 48/60, production only 40/60 on these same images.
    champion = flipped({i: (LABELS[i] + 1) % 3 for i in range(0, 60, 3)})
    challenger = flipped({i: (LABELS[i] + 2) % 3 for i in range(0, 60, 5)})
    decision = promotion_gate(
        PromotionRule(),
        {"test": answers(LABELS, challenger)},
        CLASSES,
        Champion(3, CLASSES, {"test": answers(LABELS, champion)}),
    )
    assert decision.blessed, decision.reason
    assert decision.same_dataset and decision.production_accuracy == 40 / 60
    assert "on the same 60 test images" in decision.reason


def test_worse_than_production_on_the_same_images_is_refused_even_above_its_recorded_accuracy():
    champion = flipped({0: 1})  # 59/60
    challenger = flipped({i: (LABELS[i] + 1) % 3 for i in range(0, 60, 6)})  # 50/60
    decision = promotion_gate(
        PromotionRule(),
        {"test": answers(LABELS, challenger)},
        CLASSES,
        Champion(3, CLASSES, {"test": answers(LABELS, champion)}),
    )
    assert not decision.blessed
    assert "test accuracy 0.8333 vs production v3's 0.9833" in decision.reason
    assert "significantly worse" in decision.reason  # McNemar: 10 against 1 discordant images


def test_tolerance_and_metric_are_the_users_choice():
    champion = flipped({0: 1, 21: 0})
    challenger = flipped({0: 1, 21: 0, 41: 0})  # one image worse
    rule = PromotionRule(tolerance=0.02, metric="macro_f1", max_class_regression=0.1)
    decision = promotion_gate(
        rule,
        {"test": answers(LABELS, challenger)},
        CLASSES,
        Champion(3, CLASSES, {"test": answers(LABELS, champion)}),
    )
    assert decision.blessed, decision.reason
    assert "test macro_f1" in decision.reason and "within tolerance 0.0200" in decision.reason


def test_a_changed_class_set_is_refused_unless_allowed():
    new_classes = ["cat", "dog", "owl"]
    champion = Champion(3, CLASSES)
    refused = promotion_gate(
        PromotionRule(), {"test": answers(LABELS, LABELS, new_classes)}, new_classes, champion
    )
    assert not refused.blessed and "added ['owl'], removed ['fox']" in refused.reason
    assert "--allow-class-change" in refused.reason
    allowed = promotion_gate(
        PromotionRule(allow_class_change=True),
        {"test": answers(LABELS, LABELS, new_classes)},
        new_classes,
        champion,
    )
    assert allowed.blessed and "comparisons with production skipped" in allowed.reason


def test_the_golden_set_is_a_second_set_of_same_image_checks():
    golden_labels = [0, 1, 2] * 5
    champion = {"test": answers(LABELS, LABELS), "golden": answers(golden_labels, golden_labels)}
    worse_on_golden = [1, 1, 2] * 5  # every golden cat missed
    challenger = {"test": answers(LABELS, LABELS), "golden": answers(golden_labels, worse_on_golden)}
    decision = promotion_gate(PromotionRule(), challenger, CLASSES, Champion(3, CLASSES, champion))
    assert not decision.blessed
    assert {c.name for c in decision.checks if not c.passed} >= {"metric:golden", "class_recall:golden"}
    assert set(decision.comparisons) == {"test", "golden"}


def test_production_that_cannot_be_verified_is_not_replaced_silently():
    decision = promotion_gate(
        PromotionRule(),
        {"test": answers(LABELS, LABELS)},
        CLASSES,
        Champion(3, CLASSES, problem="integrity check failed"),
    )
    assert not decision.blessed and "could not be scored on the same images" in decision.reason


def test_without_auto_promote_a_blessed_version_becomes_a_candidate():
    decision = promotion_gate(
        PromotionRule(auto_promote=False),
        {"test": answers(LABELS, LABELS)},
        CLASSES,
        Champion(3, CLASSES, {"test": answers(LABELS, LABELS)}),
    )
    assert decision.blessed and decision.action == "candidate" and "marked candidate" in decision.reason


def test_production_answers_are_reindexed_into_the_new_versions_class_order():
    from transferflow.publishing.stages import _in_order

    old_order = ["fox", "cat", "dog"]  # production's output columns
    produced = answers([1, 2, 0], [1, 0, 0], old_order)  # cat right, dog called fox, fox right
    reindexed = _in_order(produced, old_order, CLASSES)
    assert reindexed.labels == [0, 1, 2] and reindexed.predicted == [0, 2, 2]
    assert reindexed.correct.tolist() == produced.correct.tolist()


def recall_case(champion_right: int, challenger_right: int, rule: PromotionRule):
    """20 cats: production gets `champion_right` right, the new version `challenger_right`; dogs
    and foxes all right for both."""
    champion = flipped({i: 1 for i in range(20 - champion_right)})
    challenger = flipped({i: 1 for i in range(20 - challenger_right)})
    return promotion_gate(rule, {"test": answers(LABELS, challenger)}, CLASSES,
                          Champion(3, CLASSES, {"test": answers(LABELS, champion)}))


def test_a_recall_drop_at_the_boundary_is_decided_on_counts_wherever_it_starts():
    rule = PromotionRule(max_class_regression=0.1, tolerance=1.0, mcnemar_alpha=0)
    # 2 of 20 is exactly 0.1: in floats 16/20 -> 14/20 "dropped" 0.10000000000000009, 20/20 -> 18/20 0.0999...
    for before in (16, 20):
        allowed = recall_case(before, before - 2, rule)
        assert allowed.blessed, (before, allowed.reason)
        refused = recall_case(before, before - 3, rule)
        assert not refused.blessed and "drops 0.1500, more than max_class_regression 0.1000" in refused.reason


def test_a_metric_drop_at_the_tolerance_is_decided_on_counts():
    # 0.8 - 0.1 is 0.7000000000000001 in floats: 14/20 would be refused by rounding
    cats = [0] * 20
    champion, challenger = [0] * 16 + [1] * 4, [0] * 14 + [1] * 6
    at_boundary = promotion_gate(PromotionRule(tolerance=0.1, max_class_regression=1.0, mcnemar_alpha=0),
                                 {"test": answers(cats, challenger)}, CLASSES,
                                 Champion(3, CLASSES, {"test": answers(cats, champion)}))
    assert at_boundary.checks[2].name == "metric:test" and at_boundary.checks[2].passed, at_boundary.reason
    beyond = promotion_gate(PromotionRule(tolerance=0.1, max_class_regression=1.0, mcnemar_alpha=0),
                            {"test": answers(cats, [0] * 13 + [1] * 7)}, CLASSES,
                            Champion(3, CLASSES, {"test": answers(cats, champion)}))
    assert not beyond.checks[2].passed


def test_a_fixed_floor_refuses_below_it_and_passes_at_it_exactly():
    below = flipped({i: (LABELS[i] + 1) % 3 for i in range(7)})  # 53/60 = 0.8833
    refused = promotion_gate(PromotionRule(min_accuracy=0.9), {"test": answers(LABELS, below)}, CLASSES,
                             None)
    assert not refused.blessed and refused.action == "none" and refused.floor_rule == "fixed"
    assert "test accuracy 0.8833 < floor 0.9000" in refused.reason
    at = flipped({i: (LABELS[i] + 1) % 3 for i in range(6)})  # 54/60 = 0.9 exactly
    exactly = promotion_gate(PromotionRule(min_accuracy=0.9), {"test": answers(LABELS, at)}, CLASSES, None)
    assert exactly.blessed, exactly.reason


def test_the_chosen_metric_decides_where_accuracy_and_macro_f1_disagree():
    # Both 54/60 right. Production's 6 errors are spread over the classes (macro-F1 0.9000); the new
    # version's all call foxes cats (macro-F1 0.8977): as accurate, but worse by macro-F1.
    champion = flipped({0: 1, 1: 1, 20: 2, 21: 2, 40: 0, 41: 0})
    challenger = flipped({i: 0 for i in range(40, 46)})
    scored = {"test": answers(LABELS, challenger)}
    production = Champion(3, CLASSES, {"test": answers(LABELS, champion)})
    loose = dict(max_class_regression=1.0, mcnemar_alpha=0)
    assert promotion_gate(PromotionRule(metric="accuracy", **loose), scored, CLASSES, production).blessed
    refused = promotion_gate(PromotionRule(metric="macro_f1", **loose), scored, CLASSES, production)
    assert not refused.blessed and "test macro_f1 0.8977 vs production v3's 0.9000" in refused.reason
    within = promotion_gate(PromotionRule(metric="macro_f1", tolerance=0.01, **loose), scored, CLASSES,
                            production)
    assert within.blessed, within.reason


# ---------------------------------------------------------------- the comparison set


def test_production_is_compared_only_on_images_it_never_trained_on():
    from transferflow.judging.comparison_set import comparison_set

    digests = [f"d{i}" for i in range(60)]
    seen = {f"d{i}" for i in range(0, 60, 4)}  # production trained on every 4th test image: 15 of them
    # Production is right on the 15 it trained on and on 30 of the 45 others (45/60); the new version
    # is wrong on those 15 and right on 40 of the 45 (40/60). On all 60 production would win.
    champion = flipped({i: (LABELS[i] + 1) % 3 for i in range(60) if i % 4 == 1})
    challenger = flipped({i: (LABELS[i] + 1) % 3 for i in range(60) if i % 4 == 0 or i % 4 == 1 and i < 20})
    chosen = comparison_set(digests, seen)
    decision = promotion_gate(PromotionRule(), {"test": answers(LABELS, challenger)}, CLASSES,
                              Champion(3, CLASSES, {"test": answers(LABELS, champion)},
                                       compared_on={"test": chosen}))
    compared = decision.comparisons["test"]
    assert compared.excluded == 15 and compared.images == 45
    assert compared.champion["accuracy"] == 30 / 45 and compared.challenger["accuracy"] == 40 / 45
    assert decision.production_accuracy == 30 / 45 and decision.blessed, decision.reason
    assert ("production v3 compared on the 45 of 60 test images it never trained or validated on "
            "(15 excluded)") in decision.reason
    everything = promotion_gate(PromotionRule(), {"test": answers(LABELS, challenger)}, CLASSES,
                                Champion(3, CLASSES, {"test": answers(LABELS, champion)}))
    assert not everything.blessed  # the same answers, judged on all 60: production's seen images win


def test_too_few_unseen_images_skip_the_comparison_and_mark_the_version_candidate():
    from transferflow.judging.comparison_set import ComparisonSet

    chosen = ComparisonSet(keep=[0, 20, 40, 59], excluded=56)
    decision = promotion_gate(PromotionRule(), {"test": answers(LABELS, LABELS)}, CLASSES,
                              Champion(3, CLASSES, {"test": answers(LABELS, LABELS)},
                                       compared_on={"test": chosen}))
    assert decision.blessed and decision.action == "candidate"
    assert decision.comparisons == {} and decision.production_accuracy is None
    assert "only 4 of 60 test images are ones production v3 never trained or validated on (56 excluded), " \
           "fewer than the 5 a comparison needs" in decision.reason
    assert "marked candidate, not promoted" in decision.reason
    stricter = promotion_gate(PromotionRule(mcnemar_alpha=0.01), {"test": answers(LABELS, LABELS)}, CLASSES,
                              Champion(3, CLASSES, {"test": answers(LABELS, LABELS)},
                                       compared_on={"test": ComparisonSet(list(range(6)), 54)}))
    assert "fewer than the 7 a comparison needs" in stricter.reason  # 0.5**6 > 0.01: McNemar could not reject


def test_production_without_recorded_digests_is_compared_on_everything_and_flagged():
    from transferflow.judging.comparison_set import comparison_set

    decision = promotion_gate(PromotionRule(), {"test": answers(LABELS, LABELS)}, CLASSES,
                              Champion(3, CLASSES, {"test": answers(LABELS, LABELS)},
                                       compared_on={"test": comparison_set([f"d{i}" for i in range(60)],
                                                                           None)}))
    assert decision.comparisons["test"].images == 60 and decision.comparisons["test"].excluded is None
    assert "production v3 has no record of the images it trained on" in decision.reason
    assert "its score may be inflated" in decision.reason and decision.action == "promote"


def test_a_class_left_without_unseen_images_is_named_and_its_recall_not_compared():
    from transferflow.judging.comparison_set import ComparisonSet

    champion = answers(LABELS, LABELS)
    challenger = answers(LABELS, flipped({i: 0 for i in range(40, 60)}))  # every fox wrong: only on seen ones
    decision = promotion_gate(PromotionRule(), {"test": challenger}, CLASSES,
                              Champion(3, CLASSES, {"test": champion},
                                       compared_on={"test": ComparisonSet(list(range(40)), 20)}))
    assert "no image of ['fox'] is left, so their recall is not compared" in decision.reason
    assert decision.blessed, decision.reason
