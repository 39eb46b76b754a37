"""Every BACKBONES entry builds, saves and reloads as a classifier, and its blocks fit its layers.

Random weights (weights=None) at each backbone's minimum input size: no network, no S3.
"""

import keras
import numpy as np
import pytest

from transferflow.training.backbones import BACKBONES, construct
from transferflow.training.model import BACKBONE_LAYER, build_classifier, load_classifier, unfreeze_top_blocks

NAMES = sorted(BACKBONES)


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    """(spec, classifier) per backbone, shared by the tests of one backbone."""
    spec = BACKBONES[request.param]
    base = construct(spec, spec.min_size, None)
    return spec, build_classifier(base, spec, 3, 0.2)


def _pixels(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype("float32")


def test_classifier_saves_and_reloads(built, tmp_path):
    spec, classifier = built
    images = _pixels(spec.min_size)
    before = np.asarray(classifier(images, training=False))
    assert before.shape == (2, 3) and before.dtype == np.float32
    np.testing.assert_allclose(before.sum(axis=1), 1.0, rtol=1e-5)

    path = tmp_path / "m.keras"
    classifier.save(path)
    after = np.asarray(load_classifier(str(path))(images, training=False))
    assert after.dtype == np.float32
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)


def _weighted(layer) -> bool:
    return bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)


def test_blocks_are_disjoint_and_each_holds_weights(built):
    spec, classifier = built
    layers = classifier.get_layer(BACKBONE_LAYER).layers
    for layer in layers:
        matching = [prefix for prefix in spec.blocks if layer.name.startswith(prefix)]
        assert len(matching) <= 1, f"{layer.name} is in blocks {matching}"
    for prefix in spec.blocks:
        assert any(layer.name.startswith(prefix) and _weighted(layer) for layer in layers), (
            f"block {prefix!r} of {spec.name} has no layer with weights")


def test_unfreezing_the_top_block_trains_only_it(built):
    spec, classifier = built
    unfrozen = unfreeze_top_blocks(classifier, spec, 1)
    assert unfrozen and all(name.startswith(spec.blocks[-1]) for name in unfrozen)
    base = classifier.get_layer(BACKBONE_LAYER)
    training = {layer.name for layer in base.layers if layer.trainable_weights}
    assert training == set(unfrozen)
    assert not [layer.name for layer in base.layers
                if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


@pytest.mark.parametrize("name", NAMES)
def test_below_min_size_is_refused(name):
    spec = BACKBONES[name]
    with pytest.raises(ValueError, match=f"at least {spec.min_size}x{spec.min_size}"):
        construct(spec, spec.min_size - 1, None)
