"""The whole retrain flow on real parts: SeaweedFS, a Prefect test server, Keras training.

Data: 3 learnable classes of generated 32 px images, uploaded to S3. Weights: a randomly
initialised VGG16 saved to a .weights.h5 file and loaded through its s3:// URI.
"""

import json
import urllib.request

import pytest

from tests.conftest import upload_folder
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.errors import DatasetError, StorageError, WeightsError
from transferflow.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_inputs(bucket, sample_dataset, random_weights):
    storage.upload_file(random_weights, bucket, "weights/vgg16-random.weights.h5")
    return upload_folder(sample_dataset, bucket, "sources/shapes"), f"s3://{bucket}/weights/vgg16-random.weights.h5"


def learnable_config(dataset: str, weights: str, **overrides) -> RetrainConfig:
    settings = dict(dataset=dataset, weights=weights, image_size=32, head_epochs=8, head_learning_rate=1e-2,
                    fine_tune_epochs=1, fine_tune_gate=0.0, batch_size=16, patience=3, seed=1)
    return RetrainConfig(**{**settings, **overrides})


def test_retrain_registers_a_versioned_model(prefect_server, bucket, s3_inputs):
    from transferflow_flows.retrain import retrain

    dataset_uri, weights_uri = s3_inputs
    feedback = labelled_feedback(bucket, "shapes-vgg16")  # what a person labelled from `serve --capture-*`
    # a fifth in test: with splits drawn per image, a tenth of 102 images can be as few as 6 test
    # images, too few for the auto floor's binomial test to bless a perfect score
    config = learnable_config(dataset_uri, weights_uri, extra_data=feedback, test_fraction=0.2)
    result = retrain(config=config)

    registry = Registry()
    timings = result.pop("timings")  # where the run's time went, stage by stage
    assert result == {"name": "shapes-vgg16", "version": 1, "aliases": ["latest", "production"],
                      "artifact_uri": f"s3://{bucket}/models/shapes-vgg16/versions/000001/model.keras"}
    stages = ["checks", "dataset", "backbone", "features", "head", "fine_tune", "calibration",
              "evaluation", "promotion", "export", "registration", "report", "total"]
    timings.pop("prefect_start", None)  # counted by a process's first flow only: not this test's
    assert list(timings) == stages and all(seconds >= 0 for seconds in timings.values())
    assert timings["total"] >= sum(timings[s] for s in stages[:-1]) - 0.1
    assert registry.alias("shapes-vgg16", "latest")["version"] == 1
    meta = registry.metadata("shapes-vgg16", 1)
    assert meta["parameters"] == config.model_dump(mode="json")
    assert meta["classes"] == ["class_0", "class_1", "class_2"]
    assert meta["dataset"]["source"] == dataset_uri and len(meta["dataset"]["fingerprint"]) == 64
    assert meta["backbone"]["weights"] == weights_uri and meta["backbone"]["weights_sha256"]
    assert meta["image_size"] == 32 and "vgg16.preprocess_input" in meta["preprocessing"]["in_model"]
    assert meta["gate"]["fine_tune"]["passed"] is True
    assert meta["metrics"]["fine_tune"]["epochs_run"] == 1
    assert meta["lineage"]["flow_run_id"]
    assert {"tensorflow", "keras", "prefect", "boto3", "numpy"} <= set(meta["library_versions"])
    recorded = set(meta["timings"]) - {"prefect_start"}  # (stored with sorted keys)
    assert recorded == {*stages[:stages.index("registration")], "total"}  # until the export
    key = "models/shapes-vgg16/versions/000001/model.keras"
    assert storage.object_sha256(bucket, key) == (meta["artifact"]["sha256"], meta["artifact"]["size"])
    assert meta["metrics"]["test"]["accuracy"] >= 0.6, meta["metrics"]["test"]  # chance is 1/3
    test = meta["metrics"]["test"]
    assert sum(map(sum, test["confusion_matrix"])) == test["images"] and test["macro_f1"] is not None
    assert set(test["per_class"]["class_0"]) >= {"precision", "recall", "f1", "support"}
    calibration = meta["metrics"]["calibration"]  # fitted on the validation split, never worse there
    assert calibration["val_ece_after"] <= calibration["val_ece_before"] and calibration["temperature"] > 0
    assert meta["dataset"]["leakage"]["test_images"] == test["images"]
    assert meta["dataset"]["extra"]["images"] == 6 and meta["dataset"]["extra"]["source"] == feedback
    assert sum(sum(per_class.values()) for per_class in meta["dataset"]["counts"].values()) == 90 + 6
    reference = meta["monitoring"]["reference"]  # copied and verified with the version
    held_out = sum(sum(meta["dataset"]["counts"][split].values()) for split in ("test", "val"))
    assert reference["images"] == held_out and registry.reference_bytes("shapes-vgg16", 1)
    assert "staged_uri" in reference and reference["file"].startswith("monitoring/reference-")
    assert [c["name"] for c in meta["promotion"]["checks"]] == ["floor", "production"]
    assert list(storage.list_keys(bucket, "runs/")) == []  # staged copies cleaned up

    from transferflow.training.model import load_from  # the registered bytes load and predict
    model = load_from(meta["artifact"]["uri"])
    assert model.output_shape == (None, 3)

    artifacts = artifacts_of(meta["lineage"]["flow_run_id"])
    report = artifacts["retrain-report"][0].data
    assert "shapes-vgg16 version 1" in report and "`latest`" in report and "**Gate:**" in report
    assert "## Where the time went" in report and "| registration |" in report
    assert "**Promotion:**" in report and "no production version yet" in report
    assert meta["exports"]["savedmodel"]["signature"] == "serving_default"
    assert "![learning curve](http" in report and "X-Amz-Expires=604800" in report
    assert "![confusion matrix](http" in report and "macro-F1" in report
    assert json.loads(artifacts["per-class-accuracy"][0].data)[0]["class"] == "class_0"
    assert "/models/shapes-vgg16/versions/000001/model.keras" in artifacts["model-artifact"][0].data
    assert sorted(a.data for a in artifacts["progress"]) == [100.0, 100.0]  # head and fine-tune
    assert_no_secret_in(meta["lineage"]["flow_run_id"], meta, artifacts)
    curve_url = report.split("![learning curve](")[1].split(")")[0]
    with urllib.request.urlopen(curve_url) as response:  # the presigned link works as the UI uses it
        assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"

    # A second run is judged against version 1, pulled from the registry and scored on the same images.
    second = retrain(config=learnable_config(dataset_uri, weights_uri, fine_tune_epochs=0, dropout=0.5,
                                             extra_data=feedback, test_fraction=0.2))
    promotion = registry.metadata("shapes-vgg16", second["version"])["promotion"]
    same = promotion["comparisons"]["test"]
    assert same["images"] == test["images"]
    assert same["champion"]["accuracy"] == pytest.approx(test["accuracy"])
    assert promotion["production_version"] == 1 and promotion["same_dataset"] is True
    assert same["excluded"] == 0  # stable splits: none of v1's train or val images is in this test split
    assert {c["name"] for c in promotion["checks"]} == {"floor", "class_set", "comparison_set:test",
                                                        "metric:test",
                                                        "class_recall:test", "mcnemar:test"}
    assert f"on the same {test['images']} test images" in promotion["reason"]


def labelled_feedback(bucket: str, name: str) -> str:
    """6 images labelled under feedback/<name>/labeled/<class>/ (3 of class_0, 3 of class_1)."""
    import io

    import numpy as np
    from PIL import Image

    from transferflow.devstack.samples import sample_image

    rng = np.random.default_rng(21)
    for i in range(6):
        buffer = io.BytesIO()
        Image.fromarray(sample_image(i % 2, 32, rng)).save(buffer, format="PNG")
        key = f"feedback/{name}/labeled/class_{i % 2}/captured-{i}.png"
        storage.put_bytes(bucket, key, buffer.getvalue(), "image/png")
    return f"s3://{bucket}/feedback/{name}/labeled/"


def assert_no_secret_in(flow_run_id: str, metadata: dict, artifacts: dict) -> None:
    """The S3 secret key is in this process's environment; it must be nowhere a user can read."""
    import os

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    readable = {
        "parameters": json.dumps(run.parameters, default=str),
        "metadata": json.dumps(metadata),
        "artifacts": json.dumps([a.data for group in artifacts.values() for a in group], default=str),
        "logs": "\n".join(entry.message for entry in logs),
    }
    assert len(logs) > 20  # the run's logs really were read
    leaked = [where for where, text in readable.items() if secret in text]
    assert leaked == [], f"the secret key appears in {leaked}"


def artifacts_of(flow_run_id: str) -> dict[str, list]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    by_key_or_type: dict[str, list] = {}
    for artifact in found:
        by_key_or_type.setdefault(artifact.key or artifact.type, []).append(artifact)
    return by_key_or_type


def test_gate_skips_fine_tuning_for_a_weak_head(prefect_server, bucket, s3_inputs):
    from transferflow_flows.retrain import retrain

    config = learnable_config(*s3_inputs, head_epochs=1, head_learning_rate=1e-7,
                              fine_tune_gate=0.99, model_name="weak-head")
    retrain(config=config)
    meta = Registry().metadata("weak-head", 1)
    assert meta["gate"]["fine_tune"]["passed"] is False
    assert "< gate 0.9900" in meta["gate"]["fine_tune"]["reason"]
    assert meta["metrics"]["fine_tune"] is None
    assert meta["gate"]["final_phase"] == "head"
    assert meta["promotion"]["blessed"] is False and meta["promotion"]["floor_rule"] == "auto"
    assert "not significantly above the majority-class baseline" in meta["promotion"]["reason"]
    assert "production" not in Registry().aliases("weak-head")


def test_missing_dataset_fails_before_training_and_registers_nothing(prefect_server, bucket, tmp_path):
    from transferflow_flows.retrain import retrain

    with pytest.raises(DatasetError, match="does not exist"):
        retrain(config=RetrainConfig(dataset=str(tmp_path / "nowhere"), weights="none"))
    assert Registry().names() == []


def test_mismatched_weights_fail_before_training(prefect_server, bucket, s3_inputs, tmp_path):
    import keras

    from transferflow_flows.retrain import retrain

    wrong = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(str(wrong))
    with pytest.raises(WeightsError, match="does not fit backbone vgg16"):
        retrain(config=learnable_config(s3_inputs[0], str(wrong)))
    assert Registry().names() == []
    assert list(storage.list_keys(bucket, "runs/")) == []  # no training output was staged


def test_an_unchanged_dataset_is_not_prepared_twice(prefect_server, bucket, sample_dataset, tmp_path):
    import shutil

    from prefect import flow

    from transferflow_tasks.dataset import download_dataset

    source = tmp_path / "shapes"
    shutil.copytree(sample_dataset, source)

    @flow
    def prepare_twice(config: RetrainConfig):
        return [download_dataset(config, return_state=True) for _ in range(2)]

    config = RetrainConfig(dataset=str(source), weights="none")
    first, second = prepare_twice(config)
    assert first.name == "Completed" and second.name == "Cached"
    assert second.result() == first.result()

    (source / "class_0" / "img_0000.png").unlink()  # the data changed: prepare it again
    again, _ = prepare_twice(config)
    assert again.name == "Completed"
    assert sum(again.result().counts["train"].values()) < sum(first.result().counts["train"].values())


def test_credentials_can_come_from_a_prefect_secret_block(prefect_server, bucket, monkeypatch):
    """A worker with no AWS keys in its environment reads them from a Secret block."""
    import os

    from prefect import flow
    from prefect.blocks.system import Secret

    from transferflow_tasks.credentials import use_credentials_block
    from transferflow_tasks.dataset import check_storage

    keys = {"aws_access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]}
    Secret(value=keys).save("test-s3-credentials", overwrite=True)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("TRANSFERFLOW_S3_CREDENTIALS_BLOCK", "test-s3-credentials")

    @flow
    def reach_storage() -> str:
        use_credentials_block()
        return check_storage()

    assert reach_storage() == f"s3://{bucket} at {os.environ['AWS_ENDPOINT_URL']}"
    monkeypatch.setenv("TRANSFERFLOW_S3_CREDENTIALS_BLOCK", "no-such-block")
    with pytest.raises(StorageError, match="no-such-block: no Secret block of that name"):
        reach_storage()
