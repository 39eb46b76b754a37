from transferflow.training.gate import fine_tune_gate, keep_fine_tuned


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


def test_auto_gate_fine_tunes_a_head_clearly_above_chance_for_any_number_of_classes():
    ten = fine_tune_gate(0.39, "auto", 3, val_counts=[50] * 10, history={"val_loss": [2, 1.9, 1.89]},
                         max_epochs=3)
    assert ten.passed and ten.rule == "auto" and ten.threshold == 0.1 and ten.p_value < 1e-10
    assert "significantly above the majority-class baseline 0.1000" in ten.reason
    hundred = fine_tune_gate(0.05, "auto", 3, val_counts=[5] * 100, history={}, max_epochs=3)
    assert hundred.passed, hundred.reason  # 25/500 against 1%: a 5x gain is real
    coin = fine_tune_gate(0.55, "auto", 3, val_counts=[10, 10], history={}, max_epochs=3)
    assert not coin.passed and coin.p_value > 0.01  # 11/20 on two classes is a coin's luck
    assert "not significantly above" in coin.reason and "--fine-tune-gate 0" in coin.reason


def test_auto_gate_baseline_is_the_majority_class_not_uniform_chance():
    skewed = fine_tune_gate(0.9, "auto", 3, val_counts=[90, 10], history={}, max_epochs=3)
    assert skewed.threshold == 0.9 and not skewed.passed  # always answering "class 0" scores 0.9


def test_auto_gate_records_whether_the_head_converged():
    stopped = fine_tune_gate(0.8, "auto", 3, val_counts=[50] * 4, history={"val_loss": [1, 0.5, 0.6]},
                             max_epochs=10)
    assert stopped.head_converged and "early stopping ended it after 3 of 10 epochs" in stopped.reason
    falling = fine_tune_gate(0.8, "auto", 3, val_counts=[50] * 4, history={"val_loss": [1, 0.8, 0.6]},
                             max_epochs=3)
    assert falling.passed and falling.head_converged is False
    assert "had not converged" in falling.reason and "still falling (-25.0%" in falling.reason
    flat = fine_tune_gate(0.8, "auto", 3, val_counts=[50] * 4, history={"val_loss": [1, 0.6, 0.598]},
                          max_epochs=3)
    assert flat.head_converged
