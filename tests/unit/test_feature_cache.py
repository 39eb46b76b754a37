"""Head training on cached features must give the very model it claims to, and the
precision / strategy / schedule options must keep the model correct."""

import logging

import keras
import numpy as np
import pytest

from transferflow.devstack.samples import sample_image
from transferflow.training.backbones import get_spec
from transferflow.training.compute import compute_scope, plan_compute
from transferflow.training.fit import (
    balanced_class_weights,
    compile_for,
    extract_features,
    fit_head_on_features,
    fit_phase,
    learning_rate_for,
    make_dataset,
)
from transferflow.training.model import (
    STANDARDIZE_LAYER,
    build_classifier,
    rebuild_classifier,
    unfreeze_top_blocks,
)

QUIET = logging.getLogger("test")
SPEC = get_spec("vgg16")


def small_data(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class).astype(np.int32)
    return np.stack([sample_image(int(k), 32, rng) for k in labels]), labels


@pytest.fixture(scope="module")
def he_weights():
    """VGG16 weights that make the generated shapes learnable (a glorot-random VGG16 does not)."""
    keras.utils.set_random_seed(0)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([keras.initializers.HeNormal(seed=1)(kernel.shape), bias])
    return base.get_weights()


def classifier_from(weights, augment=False, dropout=0.2):
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.set_weights(weights)
    keras.utils.set_random_seed(0)
    return build_classifier(base, SPEC, 3, dropout=dropout, augment=augment)


def test_folded_head_reproduces_the_feature_trained_metrics(he_weights):
    classifier = classifier_from(he_weights)
    train, val = small_data(12, 0), small_data(4, 1)
    metrics = fit_head_on_features(classifier, train, val, epochs=4, learning_rate=0.01, batch_size=8,
                                   patience=4, seed=0, logger=QUIET)
    compile_for(classifier, 0.01)
    loss, accuracy = classifier.evaluate(make_dataset(*val, 8, False, 0), verbose=0)
    assert abs(loss - metrics.val_loss) < 1e-4
    assert accuracy == metrics.val_accuracy
    assert metrics.epochs_run == 4
    assert not classifier.get_layer("backbone").trainable  # the backbone was never touched


def test_folded_model_predicts_what_the_cached_head_predicts(he_weights):
    classifier = classifier_from(he_weights)
    train, val = small_data(10, 0), small_data(4, 1)
    fit_head_on_features(classifier, train, val, epochs=2, learning_rate=0.01, batch_size=8,
                         patience=2, seed=0, logger=QUIET)
    features = extract_features(classifier, {"val": val}, 8)["val"]
    features = classifier.get_layer(STANDARDIZE_LAYER).standardized(features)
    kernel, bias = classifier.get_layer("classifier").get_weights()
    logits = features @ kernel + bias
    cached = np.exp(logits - logits.max(axis=1, keepdims=True))
    cached /= cached.sum(axis=1, keepdims=True)
    folded = classifier.predict(val[0].astype("float32"), verbose=0)
    np.testing.assert_allclose(folded, cached, atol=1e-5)


def test_cached_and_end_to_end_heads_reach_the_same_accuracy(he_weights):
    """Without dropout's randomness both paths take the same steps: the same model comes out."""
    train, val = small_data(30, 0), small_data(10, 1)
    settings = dict(epochs=8, learning_rate=1e-3, batch_size=16, patience=8, seed=0, logger=QUIET)
    cached = fit_head_on_features(classifier_from(he_weights, dropout=0.0), train, val, **settings)
    classifier = classifier_from(he_weights, dropout=0.0)
    raw = extract_features(classifier, {"train": train}, 16)["train"]
    classifier.get_layer(STANDARDIZE_LAYER).adapt_to(raw)
    end_to_end = fit_phase(classifier, "head", train, val, **settings)
    assert cached.val_accuracy >= 0.7 and end_to_end.val_accuracy >= 0.7  # chance is 0.33
    assert abs(cached.val_accuracy - end_to_end.val_accuracy) <= 0.05
    np.testing.assert_allclose(cached.history["loss"], end_to_end.history["loss"], rtol=0.02)


def test_mixed_precision_keeps_the_softmax_float32_and_saves_a_float32_model(he_weights, tmp_path):
    plan = plan_compute(mixed_precision=True, xla=False, strategy="none", gpus=[])
    plan = type(plan)(**{**plan.as_dict(), "precision": "mixed_bfloat16"})  # as on an A100
    train = small_data(4, 0)
    with compute_scope(plan):
        classifier = rebuild_classifier(classifier_from(he_weights))
        assert classifier.get_layer("backbone").compute_dtype == "bfloat16"
        assert classifier.get_layer("classifier").compute_dtype == "float32"
        fit_phase(classifier, "head", train, train, epochs=1, learning_rate=0.01, batch_size=4,
                  patience=1, seed=0, logger=QUIET)
        mixed = classifier.predict(train[0].astype("float32"), verbose=0)
    assert mixed.dtype == np.float32
    assert keras.config.dtype_policy().name == "float32"  # the scope restored the policy
    saved = rebuild_classifier(classifier, "float32")
    assert {layer.dtype_policy.name for layer in saved.get_layer("backbone").layers} == {"float32"}
    np.testing.assert_allclose(saved.predict(train[0].astype("float32"), verbose=0), mixed, atol=0.05)


def test_mirrored_strategy_trains_on_one_cpu_device(he_weights):
    """One replica takes the very steps that no strategy takes: the same losses and accuracy."""
    import tensorflow as tf

    plan = plan_compute(mixed_precision=True, xla=True, strategy="mirrored", gpus=[])
    train, val = small_data(6, 0), small_data(2, 1)
    settings = dict(epochs=2, learning_rate=0.01, batch_size=plan.global_batch(8), patience=2, seed=0,
                    logger=QUIET)
    with compute_scope(plan):
        assert isinstance(tf.distribute.get_strategy(), tf.distribute.MirroredStrategy)
        classifier = classifier_from(he_weights)
        metrics = fit_phase(classifier, "head", train, val, **settings)
    assert isinstance(classifier.distribute_strategy, tf.distribute.MirroredStrategy)
    reference = fit_phase(classifier_from(he_weights), "head", train, val, **settings)
    assert metrics.epochs_run == reference.epochs_run == 2
    np.testing.assert_allclose(metrics.history["loss"], reference.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(metrics.val_loss, reference.val_loss, rtol=1e-4)
    assert metrics.val_accuracy == reference.val_accuracy


def test_augmentation_trains_and_is_inactive_at_inference(he_weights):
    classifier = classifier_from(he_weights, augment=True)
    images = small_data(2, 0)[0].astype("float32")
    np.testing.assert_allclose(classifier.predict(images, verbose=0), classifier.predict(images, verbose=0))
    metrics = fit_phase(classifier, "head", small_data(4, 0), small_data(2, 1), epochs=1,
                        learning_rate=0.01, batch_size=4, patience=1, seed=0, logger=QUIET)
    assert metrics.epochs_run == 1
    rebuilt = rebuild_classifier(classifier)
    np.testing.assert_allclose(rebuilt.predict(images, verbose=0), classifier.predict(images, verbose=0),
                               atol=1e-6)


def test_unfreezing_all_blocks_leaves_batchnorm_frozen():
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    classifier = build_classifier(base, get_spec("resnet50"), 3, 0.2)
    unfrozen = unfreeze_top_blocks(classifier, get_spec("resnet50"), "all")
    layers = classifier.get_layer("backbone").layers
    assert len(unfrozen) == sum(1 for layer in layers if layer.weights
                                and not isinstance(layer, keras.layers.BatchNormalization))
    assert not any(layer.trainable for layer in layers if isinstance(layer, keras.layers.BatchNormalization))


def test_warmup_starts_low_peaks_after_an_epoch_and_decays():
    schedule = learning_rate_for("warmup_cosine", 1e-3, steps_per_epoch=10, epochs=5)
    rates = [float(schedule(step)) for step in (0, 10, 30, 50)]
    assert rates[0] < 1e-4 and abs(rates[1] - 1e-3) < 1e-9 and rates[1] > rates[2] > rates[3]
    assert learning_rate_for("constant", 1e-3, 10, 5) == 1e-3


def test_balanced_class_weights_favour_the_rare_class():
    weights = balanced_class_weights(np.array([0] * 8 + [1] * 2, dtype=np.int32), 2)
    assert weights[1] == 4 * weights[0] and weights[0] * 8 + weights[1] * 2 == 10


def test_the_head_trains_on_standardised_features_and_the_model_keeps_the_statistics(he_weights, tmp_path):
    """Raw VGG16 features are large; the head sees them standardised, and the saved model applies
    the same statistics to raw pixels."""
    classifier = classifier_from(he_weights)
    train, val = small_data(10, 0), small_data(4, 1)
    raw = extract_features(classifier, {"train": train}, 8)["train"]
    metrics = fit_head_on_features(classifier, train, val, epochs=1, learning_rate=1e-3, batch_size=8,
                                   patience=1, seed=0, logger=QUIET)
    standardized = classifier.get_layer(STANDARDIZE_LAYER).standardized(raw)
    np.testing.assert_allclose(standardized.mean(axis=0), 0, atol=1e-3)
    assert 0.8 < standardized.std(axis=0)[raw.std(axis=0) > 0].mean() <= 1.0
    assert metrics.history["loss"][0] < 2 * np.log(3)  # near log(classes), not the raw features' 8-10
    classifier.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    images = val[0].astype("float32")
    np.testing.assert_allclose(loaded.predict(images, verbose=0), classifier.predict(images, verbose=0),
                               atol=1e-6)
