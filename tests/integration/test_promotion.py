"""The promotion gate against real SeaweedFS: production is pulled from the registry (bytes
verified) and scored on the very test images the new version was scored on.

To know every answer in advance, each image carries a marker: one bright pixel in the first two
rows (which are otherwise black), at a position unique to the image, over a noisy picture. The
"models" are a Flatten and a Dense layer whose only non-zero weights read those marker pixels,
so each model answers exactly what the test says it should, image by image.
"""

import logging

import numpy as np
import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.publishing import stages as publishing
from transferflow.registry import Registry
from transferflow.registry.documents import TrainingRecord

QUIET = logging.getLogger("test-promotion")
CLASSES = ["class_0", "class_1", "class_2"]
SIZE = 32
TEST_PER_CLASS, TRAIN_PER_CLASS = 10, 4
MARKER_ROWS = 2


def write_image(path, marker: int, rng) -> None:
    from PIL import Image

    pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:MARKER_ROWS] = 0
    pixels[marker // SIZE, marker % SIZE, 0] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def marked_dataset(root, first_marker: int = 0, per_class: int = TEST_PER_CLASS, seed: int = 0):
    """train/ and test/ class folders; test image k of class c has marker first_marker + c*per_class + k.
    Returns (root, {marker: true class})."""
    rng = np.random.default_rng(seed)
    truth = {}
    for label, name in enumerate(CLASSES):
        for k in range(per_class):
            marker = first_marker + label * per_class + k
            write_image(root / "test" / name / f"t{marker:03d}.png", marker, rng)
            truth[marker] = label
        for k in range(TRAIN_PER_CLASS):
            write_image(root / "train" / name / f"r{k}.png", 40 + label * TRAIN_PER_CLASS + k, rng)
    return root, truth


def marker_model(answers: dict[int, int]):
    """A classifier that answers answers[marker] for the image carrying that marker."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="classifier")(
        keras.layers.Flatten()(inputs)
    )
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((SIZE * SIZE * 3, len(CLASSES)), np.float32)
    for marker, cls in answers.items():
        kernel[marker * 3, cls] = 0.05  # 255 * 0.05: a logit of 12.75 for the chosen class
    model.get_layer("classifier").set_weights([kernel, np.zeros(len(CLASSES), np.float32)])
    return model


def answers_with(truth: dict[int, int], wrong: dict[int, int]) -> dict[int, int]:
    return {marker: wrong.get(marker, label) for marker, label in truth.items()}


def register_production(name: str, model, recorded_accuracy: float, classes=CLASSES) -> int:
    """Register a model as production, with the test accuracy it recorded on its own (old) split."""
    from transferflow.training.model import save_to

    bucket = storage.bucket_name()
    uri = f"s3://{bucket}/staging/{name}-champion.keras"
    digest, size = save_to(model, uri)
    metadata = TrainingRecord.model_validate(
        {
            "classes": classes,
            "image_size": SIZE,
            "dataset": {"fingerprint": "0" * 64},
            "metrics": {"test": {"accuracy": recorded_accuracy, "images": 12}},
        }
    )
    registry = Registry()
    version = registry.register(name, uri, digest, size, metadata, f"run-{name}-champion").version
    registry.promote(name, version, "production", reason="set up by the test")
    return version


def challenger_decision(root, name: str, model, **overrides):
    """Prepare the dataset, stage the challenger, score it and run the gate, as the flow does."""
    from transferflow.pipeline import phases
    from transferflow.training.model import save_to

    config = RetrainConfig(dataset=str(root), image_size=SIZE, model_name=name, weights="none", **overrides)
    dataset = phases.download_dataset(config, logger=QUIET)
    uri = f"s3://{storage.bucket_name()}/staging/{name}-challenger.keras"
    save_to(model, uri)
    evaluation = publishing.evaluate_model(config, dataset, uri, logger=QUIET)
    return evaluation, publishing.decide_promotion(config, dataset, evaluation, logger=QUIET)


@pytest.fixture
def marked(tmp_path):
    return marked_dataset(tmp_path / "marked")


def test_better_on_average_but_a_class_collapsed_is_refused_naming_the_class(bucket, marked):
    root, truth = marked
    champion = answers_with(
        truth, {**{m: 2 for m in range(10, 16)}, **{m: 0 for m in range(20, 26)}}
    )  # 18/30
    challenger = answers_with(truth, {m: 1 for m in range(0, 10)})  # 20/30, every class_0 image missed
    register_production("collapse", marker_model(champion), recorded_accuracy=0.6)
    evaluation, decision = challenger_decision(root, "collapse", marker_model(challenger))
    assert evaluation.test.metrics["accuracy"] == pytest.approx(20 / 30)
    assert decision.comparisons["test"].champion["accuracy"] == pytest.approx(18 / 30)
    assert not decision.blessed and decision.action == "none"
    assert "class 'class_0' recall 0.0000 vs production's 1.0000" in decision.reason
    assert [check.name for check in decision.checks if not check.passed] == ["class_recall:test"]


def test_a_harder_test_split_does_not_block_a_model_better_on_the_same_images(bucket, marked):
    root, truth = marked
    missed_by_both = {0: 1, 11: 2, 22: 0, 3: 2, 14: 0}
    champion = answers_with(truth, {**missed_by_both, 5: 1, 16: 2, 27: 0, 8: 2, 19: 0})  # 20/30
    challenger = answers_with(truth, missed_by_both)  # 25/30
    register_production("harder", marker_model(champion), recorded_accuracy=1.0)  # an easier old split
    evaluation, decision = challenger_decision(root, "harder", marker_model(challenger))
    # The old rule compared 25/30 with production's recorded 1.0 and refused.
    assert evaluation.test.metrics["accuracy"] < Registry().record("harder", 1).test_accuracy
    assert decision.blessed and decision.action == "promote", decision.reason
    assert decision.production_accuracy == pytest.approx(20 / 30) and decision.same_dataset
    assert "0.8333 vs production v1's 0.6667 on the same 30 test images" in decision.reason
    assert decision.comparisons["test"].mcnemar.challenger_only == 5


def test_an_easier_test_split_does_not_let_a_worse_model_through(bucket, marked):
    root, truth = marked
    champion = answers_with(truth, {})  # 30/30
    challenger = answers_with(truth, {0: 1, 12: 0, 24: 1})  # 27/30
    register_production("easier", marker_model(champion), recorded_accuracy=0.5)  # a harder old split
    evaluation, decision = challenger_decision(root, "easier", marker_model(challenger))
    assert (
        evaluation.test.metrics["accuracy"] > Registry().record("easier", 1).test_accuracy
    )  # old rule: bless
    assert not decision.blessed
    assert (
        "test accuracy 0.9000 vs production v1's 1.0000 on the same 30 test images: worse" in decision.reason
    )


def test_a_changed_class_set_is_refused_unless_allowed(bucket, marked):
    root, truth = marked
    register_production("classes", marker_model(truth), 1.0, classes=["class_0", "class_1", "other"])
    _, refused = challenger_decision(root, "classes", marker_model(truth))
    assert not refused.blessed and "added ['class_2'], removed ['other']" in refused.reason
    _, allowed = challenger_decision(root, "classes", marker_model(truth), allow_class_change=True)
    assert allowed.blessed and "comparisons with production skipped" in allowed.reason


def test_the_golden_set_is_stored_once_and_scored_for_both_models(bucket, marked, tmp_path):
    from transferflow.judging.evaluation import store_golden

    root, truth = marked
    golden_root, golden_truth = marked_dataset(tmp_path / "golden", first_marker=52, per_class=4, seed=1)
    golden = store_golden("golden-model", str(golden_root / "test"), logger=QUIET)
    assert (
        golden.images == 12 and golden.classes == CLASSES and golden.uri.startswith(f"s3://{bucket}/golden/")
    )
    assert Registry().golden("golden-model").fingerprint == golden.fingerprint
    everything = {**truth, **golden_truth}
    register_production("golden-model", marker_model(everything), 1.0)
    worse_on_golden = answers_with(everything, {m: 1 for m in range(52, 56)})  # golden class_0 all missed
    evaluation, decision = challenger_decision(root, "golden-model", marker_model(worse_on_golden))
    assert (
        evaluation.golden.metrics["images"] == 12
        and evaluation.golden.metrics["fingerprint"] == golden.fingerprint
    )
    assert evaluation.test.metrics["accuracy"] == 1.0  # perfect on the test split...
    assert not decision.blessed  # ...but worse on the golden set
    assert {c.name for c in decision.checks if not c.passed} >= {"metric:golden", "class_recall:golden"}


def test_production_is_scored_at_its_own_image_size_on_the_same_images(bucket, sample_dataset):
    from transferflow.judging.evaluation import prepared_at
    from transferflow.pipeline import phases

    config = RetrainConfig(dataset=str(sample_dataset), image_size=32, weights="none")
    small = phases.download_dataset(config, logger=QUIET)
    larger = prepared_at(config.dataset, small, phases.prepare_options(config), 48, logger=QUIET)
    assert larger.image_size == 48 and larger.counts == small.counts
    from transferflow.data import load_prepared

    assert (load_prepared(larger).splits["test"][1] == load_prepared(small).splits["test"][1]).all()


def test_a_golden_set_with_a_class_the_dataset_lacks_fails_before_training(bucket, marked, tmp_path):
    from transferflow.errors import DatasetError
    from transferflow.judging.evaluation import store_golden
    from transferflow.pipeline import phases

    root, _ = marked
    other = tmp_path / "other-golden"
    for name in ("class_0", "zebra"):
        for k in range(3):
            write_image(other / name / f"g{k}.png", 100 + k, np.random.default_rng(k))
    store_golden("mismatch", str(other), logger=QUIET)
    config = RetrainConfig(dataset=str(root), image_size=SIZE, model_name="mismatch", weights="none")
    with pytest.raises(DatasetError, match=r"golden set of mismatch .* has classes \['zebra'\]"):
        phases.download_dataset(config, logger=QUIET)


def test_production_without_recorded_digests_is_matched_by_decoded_pixels(bucket, sample_dataset):
    """A production registered before versions kept digests: what it trained on is found in its own
    prepared copy, by the exact pixel hash, at its size; once that copy is gone it is unknown, and
    production is compared on the whole test split with a warning in the reason."""
    import keras

    from transferflow.data import PrepareOptions, prepare_dataset, read_membership
    from transferflow.pipeline import phases
    from transferflow.training.model import save_to

    old = prepare_dataset(str(sample_dataset), PrepareOptions(SIZE, 0.1, 0.1, seed=42))
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    uri = f"s3://{bucket}/staging/legacy.keras"
    sha, size = save_to(model, uri)
    metadata = {"classes": CLASSES, "image_size": SIZE, "dataset": {"fingerprint": old.fingerprint,
                                                                    "prepared_uri": old.uri}}
    Registry().register("legacy", uri, sha, size, metadata, "run-legacy")
    Registry().promote("legacy", 1, "production", reason="registered before digests were kept")

    # A larger test split: production's val band and part of its train band are in it.
    config = RetrainConfig(dataset=str(sample_dataset), image_size=SIZE, model_name="legacy", weights="none",
                           test_fraction=0.3)
    dataset = phases.download_dataset(config, logger=QUIET)
    evaluation = publishing.evaluate_model(config, dataset, uri, logger=QUIET)
    decision = publishing.decide_promotion(config, dataset, evaluation, logger=QUIET)
    seen = set(read_membership(old.membership).digests("train", "val"))
    expected = [d for d in read_membership(dataset.membership).digests("test") if d in seen]
    assert decision.comparisons["test"].excluded == len(expected) > 0, decision.reason
    assert "matched by decoded pixels: it was registered before versions kept digests" in decision.reason

    storage.delete_prefix(bucket, storage.parse_s3_uri(old.uri).key)  # its prepared copy is gone
    unknown = publishing.decide_promotion(config, dataset, evaluation, logger=QUIET)
    assert unknown.comparisons["test"].excluded is None
    assert "production v1 has no record of the images it trained on" in unknown.reason
