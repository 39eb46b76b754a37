from transferflow.gate import fine_tune_gate, keep_fine_tuned


def test_gate_passes_at_or_above_threshold():
    decision = fine_tune_gate(0.8, 0.8, fine_tune_epochs=3)
    assert decision.passed
    assert "0.8000 >= gate 0.8000" in decision.reason


def test_gate_blocks_a_weak_head_and_says_why():
    decision = fine_tune_gate(0.42, 0.5, fine_tune_epochs=3)
    assert not decision.passed
    assert decision.value == 0.42 and decision.threshold == 0.5
    assert "0.4200 < gate 0.5000" in decision.reason


def test_zero_fine_tune_epochs_skips_even_a_strong_head():
    decision = fine_tune_gate(0.99, 0.1, fine_tune_epochs=0)
    assert not decision.passed
    assert "fine_tune_epochs is 0" in decision.reason


def test_fine_tuned_model_kept_only_without_regression():
    assert keep_fine_tuned(0.7, 0.7).passed
    assert keep_fine_tuned(0.7, 0.75).passed
    dropped = keep_fine_tuned(0.7, 0.69)
    assert not dropped.passed
    assert "keeping the head-only model" in dropped.reason


def production(version=3, accuracy=0.80, fingerprint="f" * 64):
    return version, {"metrics": {"test": {"accuracy": accuracy}}, "dataset": {"fingerprint": fingerprint}}


def test_the_first_version_is_blessed_on_the_floor_alone():
    from transferflow.gate import promotion_gate

    decision = promotion_gate(0.7, "f" * 64, 0.5, 0.0, True, None)
    assert decision.blessed and decision.action == "promote"
    assert "no production version yet" in decision.reason
    assert not promotion_gate(0.4, "f" * 64, 0.5, 0.0, True, None).blessed


def test_a_worse_model_does_not_replace_production():
    from transferflow.gate import promotion_gate

    worse = promotion_gate(0.78, "f" * 64, 0.5, 0.01, True, production())
    assert not worse.blessed and worse.action == "none"
    assert "worse than production v3's 0.8000" in worse.reason
    within = promotion_gate(0.795, "f" * 64, 0.5, 0.01, True, production())
    assert within.blessed and within.production_version == 3 and within.same_dataset


def test_blessed_without_auto_promote_becomes_a_candidate():
    from transferflow.gate import promotion_gate

    decision = promotion_gate(0.9, "f" * 64, 0.5, 0.0, False, production())
    assert decision.blessed and decision.action == "candidate" and "marked candidate" in decision.reason


def test_a_different_dataset_is_said_in_the_decision():
    from transferflow.gate import promotion_gate

    decision = promotion_gate(0.9, "a" * 64, 0.5, 0.0, True, production(fingerprint="b" * 64))
    assert decision.same_dataset is False and "not directly comparable" in decision.reason
