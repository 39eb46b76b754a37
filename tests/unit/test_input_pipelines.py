"""The training and evaluation input pipelines run without tf.data's autotuning thread: its
optimisation period grows to 60 s and an iterator's destructor waits for it, which kept Keras's fit()
from returning for up to 25 s after a fine-tuning phase of minute-long epochs."""

import numpy as np

from transferflow.training.fit import split_dataset, train_batches


def test_training_and_evaluation_batches_have_autotuning_off_and_the_same_contents():
    x = np.arange(10 * 2 * 2 * 3, dtype=np.float32).reshape(10, 2, 2, 3)
    y = np.arange(10, dtype=np.int32)
    stream = train_batches((x, y), 4, seed=0, epochs=2)
    evaluation = split_dataset((x, y), 4, False, 0)
    for dataset in (stream, evaluation):
        assert dataset.options().autotune.enabled is False
    seen = [labels for _, labels in stream.as_numpy_iterator()]
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2]  # two epochs, each a whole permutation
    assert sorted(np.concatenate(seen[:3])) == list(range(10)) == sorted(np.concatenate(seen[3:]))
    batches = list(evaluation.as_numpy_iterator())
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)  # in order, float32
