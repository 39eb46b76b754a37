"""Training that goes wrong stops with a clear error, and nothing is registered."""

import logging

import numpy as np
import pytest

from transferflow.errors import TrainingError
from transferflow.training.fit import fit_phase


def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_a_nan_or_inf_loss_stops_training_with_a_clear_error(poison):
    x = np.ones((16, 4), dtype="float32")
    x[3, 1] = poison  # one bad value is enough to poison the loss
    y = np.zeros(16, dtype="int32")
    with pytest.raises(TrainingError, match="the loss became nan .*diverged.*nothing was registered"):
        fit_phase(tiny_model(), "head", (x, y), (x, y), epochs=5, learning_rate=0.01, batch_size=16,
                  patience=5, seed=0, logger=logging.getLogger("t"))
