"""Monitoring's statistics without servers: sketches, their documents, merging, the drift tests and
their correction, and the classifier's feature view."""

import numpy as np

from transferflow.monitoring.drift import DriftTest, compare, holm, mmd_test
from transferflow.monitoring.layout import WindowId, window_key, window_of_key
from transferflow.monitoring.sketch import (
    PROJECTION_DIM,
    Reservoir,
    Sketch,
    from_document,
    merge,
    projection,
    size_bucket,
    to_document,
)

CLASSES = [f"c{i}" for i in range(4)]
DIM = 64


class Traffic:
    """A toy model's answers: features from a Gaussian (shifted by `shift`), probabilities a
    fixed softmax of them, so that a shift in features also moves the answers."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.weights = np.random.default_rng(99).normal(size=(DIM, len(CLASSES))) / 4

    def answers(self, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        features = (self.rng.normal(size=(n, DIM)) + shift).astype(np.float32)
        logits = features @ self.weights
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        return probabilities / probabilities.sum(axis=1, keepdims=True), features


def sketch_of(traffic: Traffic, n: int, shift: float = 0.0, capacity: int = 512,
              per_request: int = 1) -> Sketch:
    sketch = Sketch(CLASSES, projection(DIM), capacity=capacity)
    for _ in range(n // per_request):
        probabilities, features = traffic.answers(per_request, shift)
        sketch.add(probabilities, features, [("jpeg", 100)] * per_request)
    return sketch


def test_the_projection_is_the_same_in_every_process_and_identity_for_small_features():
    first, again = projection(DIM), projection.__wrapped__(DIM)
    assert first.checksum == again.checksum and first.out == PROJECTION_DIM
    np.testing.assert_array_equal(first.matrix, again.matrix)
    small = projection(8)
    assert small.matrix is None and small.out == 8


def test_a_reservoir_is_bounded_and_a_uniform_sample():
    reservoir = Reservoir(100, 1, seed=3)
    for start in range(0, 10_000, 7):  # batches of 7, as requests come
        values = np.arange(start, min(start + 7, 10_000), dtype=np.float32)
        reservoir.add(values, values.astype(np.int32), values[:, None])
    confidence, _, features = reservoir.rows()
    assert reservoir.seen == 10_000 and len(confidence) == 100
    np.testing.assert_array_equal(confidence, features[:, 0])  # rows stay together
    assert 3500 < confidence.mean() < 6500  # a uniform sample of 0..9999, not the first or last rows


def test_a_window_document_round_trips():
    sketch = sketch_of(Traffic(1), 700)
    sketch.errors, sketch.dropped = 3, 2
    again = from_document(to_document(sketch))
    assert (again.requests, again.images, again.errors, again.dropped) == (700, 700, 3, 2)
    np.testing.assert_array_equal(again.predicted, sketch.predicted)
    np.testing.assert_array_equal(again.confidence, sketch.confidence)
    assert again.formats == {"jpeg": 700} and again.sizes == {"<=128": 700}
    for mine, theirs in zip(sketch.reservoir.rows(), again.reservoir.rows(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert again.projection.checksum == sketch.projection.checksum and len(again.reservoir) == 512


def test_merging_replicas_adds_counts_and_weighs_rows_by_the_images_they_stand_for():
    busy, quiet = sketch_of(Traffic(1), 3000, shift=0.0), sketch_of(Traffic(2), 100, shift=5.0)
    merged = merge([from_document(to_document(busy)), from_document(to_document(quiet))])
    assert merged.images == 3100 and merged.predicted.sum() == 3100
    features = merged.reservoir.rows()[2]
    quiet_rows = {row.tobytes() for row in quiet.reservoir.rows()[2]}
    share = np.mean([row.tobytes() in quiet_rows for row in features])
    assert len(features) == 512 and 0.0 < share < 0.1  # ~100/3100 of the rows, not half


def test_no_shift_is_not_drift_and_a_shift_is():
    reference = sketch_of(Traffic(1), 400, capacity=2000)
    same = compare(reference, sketch_of(Traffic(2), 200), seed=1)
    assert same.drift is False and [t.name for t in same.tests] == ["class_mix", "confidence", "features"]
    shifted = compare(reference, sketch_of(Traffic(3), 200, shift=0.5), seed=1)
    assert shifted.drift is True and "features" in shifted.fired()
    assert all(t.p_adjusted >= t.p_value for t in shifted.tests)


def test_false_alarms_stay_near_alpha():
    """40 windows without a shift, at alpha 0.1 so that the rate is measurable: Holm over three
    valid tests keeps the family-wise rate at or below alpha (at most 8 of 40 here)."""
    reference = sketch_of(Traffic(1), 300, capacity=2000)
    alarms = sum(bool(compare(reference, sketch_of(Traffic(100 + i), 100), alpha=0.1, permutations=99,
                              seed=i).drift) for i in range(40))
    assert alarms <= 8


def test_a_small_window_is_not_tested_and_other_classes_are_not_comparable():
    reference = sketch_of(Traffic(1), 300)
    assert compare(reference, sketch_of(Traffic(2), 10)).drift is None
    other = Sketch(["x", "y"], projection(DIM))
    other.add(np.array([[0.5, 0.5]] * 40), np.zeros((40, DIM)))
    verdict = compare(reference, other)
    assert verdict.drift is None and "not comparable" in verdict.note


def test_features_from_another_projection_are_not_compared():
    reference = sketch_of(Traffic(1), 300)
    window = Sketch(CLASSES, projection(16))
    traffic = Traffic(2)
    for _ in range(50):
        probabilities, features = traffic.answers(1)
        window.add(probabilities, features[:, :16])
    [features] = [t for t in compare(reference, window).tests if t.name == "features"]
    assert features.p_value is None and "projection differs" in features.note and not features.fired


def test_holm_matches_its_definition():
    tests = [DriftTest(name=n, method="-", p_value=p) for n, p in (("a", 0.01), ("b", 0.04), ("c", 0.03))]
    holm(tests, alpha=0.05)
    assert [round(t.p_adjusted, 6) for t in tests] == [0.03, 0.06, 0.06]
    assert [t.fired for t in tests] == [True, False, False]


def test_mmd_sees_a_shift_in_the_mean_and_not_noise():
    rng = np.random.default_rng(0)
    same = mmd_test(rng.normal(size=(150, 8)), rng.normal(size=(100, 8)), 199, rng)[1]
    moved = mmd_test(rng.normal(size=(150, 8)), rng.normal(size=(100, 8)) + 0.5, 199, rng)[1]
    assert same > 0.05 and moved <= 0.005


def test_keys_name_the_window_and_the_replica():
    from datetime import UTC, datetime

    key = window_key("flowers", 3, datetime(2026, 1, 2, 13, tzinfo=UTC), 1, "pod-a-12ab")
    assert key == "monitoring/flowers/000003/windows/20260102T130000Z/0001-pod-a-12ab.json"
    assert window_of_key(key) == (WindowId("20260102T130000Z", 1), "pod-a-12ab")
    assert window_of_key("monitoring/flowers/000003/verdicts/x.json") is None
    assert size_bucket(100) == "<=128" and size_bucket(5000) == ">4096"


def test_the_feature_view_answers_the_models_own_probabilities():
    import keras

    from transferflow.monitoring.features import feature_dim, split, with_features

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classifier")(x))
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype(np.float32)
    probabilities, features = split(np.asarray(with_features(model).predict_on_batch(pixels)), 3)
    np.testing.assert_array_equal(probabilities, np.asarray(model.predict_on_batch(pixels)))
    assert feature_dim(model) == 4 and features.shape == (5, 4) and (features >= 0).all()
