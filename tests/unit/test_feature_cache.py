"""Head training on cached features must give the very model it claims to."""

import logging

import keras
import numpy as np

from transferflow.backbones import get_spec
from transferflow.model import build_classifier
from transferflow.samples import sample_image
from transferflow.training import compile_for, fit_head_on_features, make_dataset


def small_data(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class).astype(np.int32)
    return np.stack([sample_image(int(k), 32, rng) for k in labels]), labels


def test_folded_head_reproduces_the_feature_trained_metrics():
    keras.utils.set_random_seed(0)
    spec = get_spec("vgg16")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([keras.initializers.HeNormal(seed=1)(kernel.shape), bias])
    classifier = build_classifier(base, spec, 3, dropout=0.2)
    train, val = small_data(12, 0), small_data(4, 1)
    metrics = fit_head_on_features(classifier, train, val, epochs=4, learning_rate=0.01, batch_size=8,
                                   patience=4, seed=0, logger=logging.getLogger("test"))
    compile_for(classifier, 0.01)
    loss, accuracy = classifier.evaluate(make_dataset(*val, 8, False, 0), verbose=0)
    assert abs(loss - metrics.val_loss) < 1e-4
    assert accuracy == metrics.val_accuracy
    assert metrics.epochs_run == 4
    assert not base.trainable  # the backbone was never touched
