"""What a registered version serves: the verified .keras, a SavedModel, a model card, predict."""

import json
import logging

import numpy as np
import pytest

from tests.integration.test_cli import run_cli
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.errors import RegistryError
from transferflow.pipeline import phases
from transferflow.publishing import stages as publishing
from transferflow.registry import Registry

QUIET = logging.getLogger("test-serving")


@pytest.fixture
def registered(bucket, sample_dataset, random_weights):
    """A real model trained briefly on the sample shapes, registered the way the flow does it."""
    config = RetrainConfig(dataset=str(sample_dataset), weights=str(random_weights),
                           image_size=32, head_epochs=3,
                           head_learning_rate=1e-2, batch_size=16, model_name="shapes",
                           promote_min_accuracy=0.0)
    dataset = phases.download_dataset(config, logger=QUIET)
    backbone = phases.build_backbone(config, logger=QUIET)
    head = phases.train_head(config, dataset, backbone, "run-1", logger=QUIET)
    evaluation = publishing.evaluate_model(config, dataset, head.model_uri, logger=QUIET)
    promotion = publishing.decide_promotion(config, dataset, evaluation, logger=QUIET)
    savedmodel = publishing.export_model(head, "run-1", logger=QUIET)
    gate = phases.GateDecision(passed=False, metric="val_accuracy", value=0.0, threshold=0.0, reason="skip")
    metadata = publishing.build_metadata(config, dataset, backbone, head, gate, None, evaluation, None,
                                         promotion, savedmodel)
    result = publishing.register_model(config, metadata, head, "run-1", logger=QUIET)
    return publishing.apply_promotion(config, result, promotion, logger=QUIET), sample_dataset


def test_a_version_carries_a_savedmodel_and_a_model_card(registered, tmp_path):
    import tensorflow as tf

    from transferflow.training.model import load_model

    result, dataset = registered
    meta = Registry().metadata("shapes", 1)
    assert result.aliases == ["latest", "production"]  # first version: nothing to beat
    assert meta["promotion"]["action"] == "promote"
    assert "no production version yet" in meta["promotion"]["reason"]
    signature = meta["exports"]["savedmodel"]
    assert signature["signature"] == "serving_default" and "image" in signature["inputs"]

    bucket = storage.bucket_name()
    prefix = "models/shapes/versions/000001"
    card = storage.client().get_object(Bucket=bucket, Key=f"{prefix}/MODEL_CARD.md")["Body"].read().decode()
    assert "# Model card: shapes version 1" in card and "## Limitations" in card and "class_0" in card

    local = tmp_path / "savedmodel"
    for relative in signature["files"]:
        storage.download_file(bucket, f"{prefix}/savedmodel/{relative}", local / relative)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    served = tf.saved_model.load(str(local)).signatures["serving_default"](image=tf.constant(images))
    expected = load_model("shapes@production").predict(images, verbose=0)
    np.testing.assert_allclose(served["output_0"].numpy(), expected, atol=1e-5)


def test_predict_matches_the_model_on_the_same_images(registered):
    from transferflow.data import decode_images
    from transferflow.training.model import load_model

    _, dataset = registered
    files = sorted((dataset / "class_1").iterdir())[:3]
    result = run_cli("predict", "shapes@production", *map(str, files), "--top-k", "2", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    expected = load_model("shapes:1").predict(decode_images(files, 32).images.astype("float32"), verbose=0)
    assert answer["model"] == "shapes:1" and len(answer["predictions"]) == 3
    for row, probabilities in zip(answer["predictions"], expected, strict=True):
        best = int(np.argmax(probabilities))
        assert row["top"][0]["class"] == f"class_{best}"
        assert row["top"][0]["probability"] == pytest.approx(float(probabilities[best]), abs=1e-5)
        assert len(row["top"]) == 2
    human = run_cli("predict", "shapes", str(dataset / "class_1"))
    assert human.returncode == 0 and human.stdout.count("class_") >= 30


def test_a_tampered_artifact_is_refused_by_load_model(registered):
    from transferflow.training.model import load_model

    key = "models/shapes/versions/000001/model.keras"
    storage.client().put_object(Bucket=storage.bucket_name(), Key=key, Body=b"not the evaluated model")
    with pytest.raises(RegistryError, match="integrity"):
        load_model("shapes:1")
