"""The Keras private-API patch for multi-worker training: applied on the Keras it was checked on,
refused clearly outside that range or when the replaced functions changed."""

import pytest

from transferflow.errors import ConfigError
from transferflow.scaleout import multiworker


@pytest.fixture
def trainer(monkeypatch):
    """Keras's TensorFlow trainer module, restored after the test."""
    from keras.src.backend.tensorflow import trainer

    monkeypatch.setattr(trainer, "reduce_per_replica", trainer.reduce_per_replica)
    monkeypatch.setattr(trainer.TensorFlowTrainer, "_maybe_symbolic_build",
                        trainer.TensorFlowTrainer._maybe_symbolic_build)
    monkeypatch.delattr(trainer, "_transferflow_multi_worker", raising=False)
    return trainer


def test_the_patch_replaces_both_functions_once(trainer):
    original = trainer.reduce_per_replica
    multiworker.patch_keras()
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is multiworker._symbolic_build_on_local_batch
    patched = trainer.reduce_per_replica
    assert patched is not original and trainer._transferflow_multi_worker
    multiworker.patch_keras()
    assert trainer.reduce_per_replica is patched  # idempotent: not wrapped twice


def test_a_keras_outside_the_checked_range_is_refused(trainer, monkeypatch):
    import keras

    monkeypatch.setattr(keras, "__version__", "3.16.0")
    with pytest.raises(ConfigError, match=r"keras 3.16.0's TensorFlow trainer .* checked on keras "
                       r"<3.16,>=3.15 only.*engine local"):
        multiworker.patch_keras()
    assert not getattr(trainer, "_transferflow_multi_worker", False)


def test_a_changed_private_function_is_refused_even_in_range(trainer, monkeypatch):
    monkeypatch.setattr(trainer, "reduce_per_replica", lambda values, strategy: values)
    with pytest.raises(ConfigError,
                       match=r"private reduce_per_replica\(values, strategy, reduction\) has changed"):
        multiworker.patch_keras()
