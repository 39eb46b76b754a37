"""The classifier with a second view: one forward pass gives the class probabilities and the
penultimate features (the classifier layer's input), as one float32 array (n, classes + dim).

One output rather than two, so that whatever batches and slices model outputs (the serving
batcher) needs no change; `split` takes the two apart. The layers and weights are the model's own,
so the probabilities are the ones the plain model answers.
"""

from __future__ import annotations

import numpy as np

CLASSIFIER_LAYER = "classifier"


def with_features(model):
    """keras.Model: pixels -> concat(probabilities, classifier input), over the same layers."""
    import keras

    names = [layer.name for layer in model.layers]
    head = model.get_layer(CLASSIFIER_LAYER) if CLASSIFIER_LAYER in names else model.layers[-1]
    features = keras.ops.cast(head.input, "float32")
    joined = keras.ops.concatenate([keras.ops.cast(model.output, "float32"), features], axis=-1)
    return keras.Model(model.inputs, joined, name=f"{model.name}_with_features")


def feature_dim(model) -> int:
    """How many penultimate features `with_features(model)` appends."""
    names = [layer.name for layer in model.layers]
    head = model.get_layer(CLASSIFIER_LAYER) if CLASSIFIER_LAYER in names else model.layers[-1]
    return int(head.input.shape[-1])


def split(outputs: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, classes), features (n, dim)) of with_features' outputs."""
    return outputs[:, :classes], outputs[:, classes:]
