"""Progress reporting from training: every epoch, and done at 100% even after early stopping."""

import logging

import keras
import numpy as np

from transferflow.training.fit import fit_phase


def test_progress_reaches_100_percent_when_early_stopping_ends_training():
    calls = []
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).integers(0, 2, 32).astype(np.int32)  # noise: val_loss soon stalls
    fit_phase(model, "head", (x, y), (x, y), epochs=50, learning_rate=0.5, batch_size=8, patience=1,
              seed=0, logger=logging.getLogger("test"),
              on_epoch=lambda done, total: calls.append((done, total)))
    assert calls[0] == (1, 50)
    assert calls[-2][0] < 50, "training should have stopped early for this test to mean anything"
    assert calls[-1] == (50, 50)
    assert all(total == 50 for _, total in calls)
