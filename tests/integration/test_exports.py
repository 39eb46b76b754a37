"""Portable exports of a real (small, 32 px) classifier against real SeaweedFS: made and checked at
registration, added to a registered version, pulled with their sha256 checked, and the SavedModel's
`serving_bytes` signature answering as `transferflow predict` does.

One model is trained and registered (with --export onnx) for the whole module: conversions cost
seconds each. Tests that change a version work on a copy of it, so they do not depend on each other.
"""

from __future__ import annotations

import logging
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from transferflow import storage
from transferflow.cli import main
from transferflow.config import RetrainConfig
from transferflow.data import load_prepared
from transferflow.errors import ExportError, RegistryError
from transferflow.pipeline import phases
from transferflow.publishing import exports
from transferflow.publishing import stages as publishing
from transferflow.registry import Registry

QUIET = logging.getLogger("test-exports")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shapes(s3_server, sample_dataset, random_weights):
    """shapes:1, trained briefly on the sample shapes and registered as the flow does, with
    export=["onnx"]; its bucket lives as long as the module."""
    with pytest.MonkeyPatch.context() as patch:
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        patch.setenv("TRANSFERFLOW_BUCKET", bucket)
        storage.ensure_bucket(bucket)
        config = RetrainConfig(dataset=str(sample_dataset), weights=str(random_weights),
                           image_size=32, head_epochs=3,
                               head_learning_rate=1e-2, batch_size=16, model_name="shapes", export=["onnx"])
        dataset = phases.download_dataset(config, logger=QUIET)
        backbone = phases.build_backbone(config, logger=QUIET)
        head = phases.train_head(config, dataset, backbone, "run-1", logger=QUIET)
        evaluation = publishing.evaluate_model(config, dataset, head.model_uri, logger=QUIET)
        savedmodel = publishing.export_model(head, "run-1", logger=QUIET)
        formats = publishing.export_formats(config, dataset, head, "run-1", logger=QUIET)
        gate = phases.GateDecision(passed=False, metric="val_accuracy", value=0.0, threshold=0.0,
                                   reason="skip")
        metadata = publishing.build_metadata(config, dataset, backbone, head, gate, None, evaluation, None,
                                             None, savedmodel, None, head, formats)
        publishing.register_model(config, metadata, head, "run-1", logger=QUIET)
        yield SimpleNamespace(bucket=bucket, dataset=dataset, folder=sample_dataset)
        storage.delete_prefix(bucket, "")
        storage.client().delete_bucket(Bucket=bucket)


@pytest.fixture(autouse=True)
def restore_log_handlers():
    """`main` adds a stderr handler to the transferflow logger on each call, as a process does once."""
    logger = logging.getLogger("transferflow")
    saved, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = saved
    logger.setLevel(level)


def copy_of_version_1(run_id: str) -> int:
    """A new version of shapes with v1's artifact and metadata (no exports but the SavedModel's
    description): a version a test may change."""
    registry = Registry()
    meta = registry.record("shapes", 1)
    given = {key: value for key, value in meta.document().items()
             if key not in ("name", "version", "registered_at", "artifact", "library_versions", "run_id")}
    given["exports"] = {}
    artifact = meta.artifact
    return registry.register("shapes", artifact.uri, artifact.sha256, artifact.size, given, run_id,
                             aliases=()).version


def keras_and_test_split(shapes):
    from transferflow.training.model import load_model

    x, y = load_prepared(shapes.dataset).splits["test"]
    return load_model("shapes:1").predict(x.astype(np.float32), verbose=0), x.astype(np.float32), y


def test_registration_with_export_onnx_records_its_check_and_the_file_agrees_with_keras(shapes, tmp_path):
    import onnxruntime

    listed = Registry().metadata("shapes", 1)["exports"]["onnx"]
    check = listed["verification"]
    images = len(load_prepared(shapes.dataset).splits["test"][1])  # the stable split's own count
    assert check["split"] == "test" and check["images"] == images > 0
    assert check["agreement"] >= 0.995 and check["max_prob_diff"] < 1e-4
    assert check["accuracy_change"] == 0.0
    assert listed["runtime"]["onnxruntime"] and listed["converter"]["versions"]["tf2onnx"]
    assert listed["file"].startswith("exports/onnx-") and listed["file"].endswith(".onnx")
    key = f"models/shapes/versions/000001/{listed['file']}"
    assert storage.object_sha256(shapes.bucket, key) == (listed["sha256"], listed["size"])

    path = Registry().pull("shapes:1", tmp_path, "onnx")
    assert path.name == "shapes-v1.onnx"
    expected, x, _ = keras_and_test_split(shapes)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    answered = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert (answered.argmax(1) == expected.argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(answered, expected, atol=1e-4)


def test_models_export_lists_the_file_only_once_it_is_stored_and_verified(shapes, tmp_path, monkeypatch,
                                                                           capsys):
    from ai_edge_litert.interpreter import Interpreter

    import transferflow.registry.exports as registry_exports

    version = copy_of_version_1("run-litert")
    key = f"models/shapes/versions/{version:06d}/metadata.json"
    before, before_etag = storage.get_json(shapes.bucket, key)
    seen_during_upload = []
    upload = registry_exports.storage.upload_file

    def watched_upload(path, bucket, key):  # what a reader sees while the export is uploaded
        seen_during_upload.append(Registry().metadata("shapes", version))
        upload(path, bucket, key)

    monkeypatch.setattr(registry_exports.storage, "upload_file", watched_upload)
    assert main(["models", "export", f"shapes:{version}", "--format", "litert"]) == 0
    out = capsys.readouterr().out
    assert f"added litert to shapes:{version}" in out and "agreement 1.0000" in out

    assert seen_during_upload == [before]  # readable, and not yet listing the export
    after, after_etag = storage.get_json(shapes.bucket, key)
    assert after_etag != before_etag
    listed = after["exports"].pop("litert")
    assert after == before  # nothing else changed
    assert listed["verification"]["agreement"] >= 0.995 and listed["runtime"]["ai-edge-litert"]
    assert listed["added_by"] and listed["converter"]["quantization"] == "none (float32)"

    path = Registry().pull(f"shapes:{version}", tmp_path, "litert")
    expected, x, _ = keras_and_test_split(shapes)
    interpreter = Interpreter(model_path=str(path))
    given, answer = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(given["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], x)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(answer["index"]), expected, atol=1e-4)
    assert main(["models", "export", f"shapes:{version}", "--format", "litert"]) == 1  # never replaced
    assert "already has its litert export" in capsys.readouterr().err


def test_int8_reports_its_accuracy_change(shapes, capsys):
    version = copy_of_version_1("run-int8")
    assert main(["models", "export", f"shapes:{version}", "--format", "litert", "--int8"]) == 0
    assert "against Keras" in capsys.readouterr().out
    listed = Registry().metadata("shapes", version)["exports"]["litert_int8"]
    check = listed["verification"]
    assert check["accuracy_change"] == pytest.approx(check["accuracy"] - check["keras_accuracy"])
    assert check["required"] == {"max_accuracy_drop": exports.MAX_INT8_ACCURACY_DROP}
    assert listed["converter"]["quantization"].startswith("int8 weights and activations")
    float_size = Registry().metadata("shapes", 1)["exports"]["onnx"]["size"]
    assert listed["size"] < float_size / 3  # 8-bit weights instead of 32-bit ones


def test_a_corrupted_export_is_refused_at_pull(shapes, tmp_path, capsys):
    listed = Registry().metadata("shapes", 1)["exports"]["onnx"]
    key = f"models/shapes/versions/000001/{listed['file']}"
    original = storage.client().get_object(Bucket=shapes.bucket, Key=key)["Body"].read()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, one byte changed
    storage.put_bytes(shapes.bucket, key, bytes(flipped), "application/octet-stream")
    try:
        with pytest.raises(RegistryError, match="integrity check failed for shapes:1 .* the stored onnx "
                                                "export was altered"):
            Registry().pull("shapes:1", tmp_path / "out", "onnx")
        assert list((tmp_path / "out").iterdir()) == []  # nothing left that a loader could pick up
        assert main(["models", "pull", "shapes:1", str(tmp_path / "cli"), "--format", "onnx"]) == 1
        assert "integrity check failed" in capsys.readouterr().err
    finally:
        storage.put_bytes(shapes.bucket, key, original, "application/octet-stream")


def test_pulling_an_export_the_version_lacks_names_the_command_that_adds_it(shapes, tmp_path):
    with pytest.raises(RegistryError, match=r"shapes:1 has no litert_int8 export \(it has: keras, onnx\): "
                                            r"add one with `transferflow models export shapes:1"):
        Registry().pull("shapes:1", tmp_path, "litert_int8")


def test_a_concurrent_metadata_change_is_a_clear_error_and_wins(shapes, tmp_path, monkeypatch):
    version = copy_of_version_1("run-race")
    key = f"models/shapes/versions/{version:06d}/metadata.json"
    export = tmp_path / "model.tflite"
    export.write_bytes(b"stand-in for a verified export")
    entry = {"size": export.stat().st_size, "sha256": storage.sha256_file(export), "verification": {}}
    read_slot, reads = Registry.export_slot, []

    def then_someone_else_writes(self, *args):  # another writer, between the listing's read and write
        found = read_slot(self, *args)
        reads.append(found)
        if len(reads) == 2:
            storage.put_json(shapes.bucket, key, {**found[0], "description": "edited meanwhile"})
        return found

    monkeypatch.setattr(Registry, "export_slot", then_someone_else_writes)
    with pytest.raises(RegistryError, match=f"metadata.json of shapes:{version} changed while the litert "
                                            "export was being listed"):
        Registry().add_export("shapes", version, "litert", export, entry)
    document = Registry().metadata("shapes", version)
    assert document["description"] == "edited meanwhile" and "litert" not in document["exports"]


def test_an_export_that_fails_its_check_is_not_published(shapes, monkeypatch, capsys):
    version = copy_of_version_1("run-bad")

    def fake_convert(model, spec, path, train_split=None):
        path.write_bytes(b"converted")
        return {}

    answers = np.float32([0.8, 0.15, 0.05])
    always_class_0 = exports.Loaded(lambda x: np.tile(answers, (len(x), 1)), "in", "out")
    monkeypatch.setattr(exports, "convert", fake_convert)
    monkeypatch.setattr(exports, "load", lambda spec, path: always_class_0)
    before = Registry().metadata("shapes", version)
    images = len(load_prepared(shapes.dataset).splits["test"][1])
    with pytest.raises(ExportError, match=fr"the onnx export failed its check on {images} test images: top-1 "
                                          r"agreement 0\.\d{4} is below 0.995 .*it was not published"):
        exports.export_registered(f"shapes:{version}", "onnx")
    assert Registry().metadata("shapes", version) == before
    prefix = f"models/shapes/versions/{version:06d}/exports/"
    assert list(storage.list_keys(shapes.bucket, prefix)) == []


def test_serving_bytes_answers_as_predict_on_the_same_png_bytes(shapes, tmp_path):
    import tensorflow as tf

    from transferflow.serving.predict import predict

    savedmodel = Registry().metadata("shapes", 1)["exports"]["savedmodel"]
    assert set(savedmodel["signatures"]) == {"serving_default", "serving_bytes"}
    assert "image_bytes" in savedmodel["signatures"]["serving_bytes"]["inputs"]
    local = tmp_path / "savedmodel"
    for relative in savedmodel["files"]:
        storage.download_file(shapes.bucket, f"models/shapes/versions/000001/savedmodel/{relative}",
                              local / relative)
    files = [sorted((shapes.folder / f"class_{label}").glob("*.png"))[0] for label in range(3)]
    signature = tf.saved_model.load(str(local)).signatures["serving_bytes"]
    posted = tf.constant([path.read_bytes() for path in files])
    served = signature(image_bytes=posted)["probabilities"].numpy()

    _, predictions = predict("shapes:1", [str(path) for path in files], top_k=3)
    classes = Registry().record("shapes", 1).classes
    for row, prediction in zip(served, predictions, strict=True):
        by_class = dict(prediction.top)
        np.testing.assert_allclose(row, [by_class[name] for name in classes], atol=1e-4)
