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
