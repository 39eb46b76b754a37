"""The `transferflow` command as a user runs it: a real process, Prefect's ephemeral API."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import upload_folder
from transferflow import storage


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "transferflow.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.mark.slow
def test_train_then_list_and_show(bucket, sample_dataset, random_weights, tmp_path):
    storage.upload_file(random_weights, bucket, "w/vgg16.weights.h5")
    dataset = upload_folder(sample_dataset, bucket, "src/shapes")
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    golden = run_cli("models", "golden", "cli-model", "--dataset", str(sample_dataset))  # before any version
    assert golden.returncode == 0, golden.stderr[-3000:]
    assert "cli-model golden set: 90 images in 3 classes" in golden.stdout
    trained = run_cli("train", "--dataset", dataset, "--weights", f"s3://{bucket}/w/vgg16.weights.h5",
                      "--image-size", "32", "--head-epochs", "2", "--fine-tune-epochs", "1", "--model-name",
                      "cli-model", "--batch-size", "16", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "registered cli-model version 1" in trained.stdout
    assert f"s3://{bucket}/models/cli-model/versions/000001/model.keras" in trained.stdout
    assert "head epoch 1/2" in trained.stderr + trained.stdout  # Keras progress reaches the run log
    skipped = run_cli("train", "--dataset", dataset, "--weights", f"s3://{bucket}/w/vgg16.weights.h5",
                      "--image-size", "32", "--head-epochs", "2", "--fine-tune-epochs", "1", "--model-name",
                      "cli-model", "--batch-size", "16", "--if-changed", env=env)  # nothing changed: no v2
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert skipped.stdout.splitlines()[-1].startswith(
        "skipped: the dataset and the training configuration are those of cli-model:1 ("), skipped.stdout
    timings = trained.stdout.split("time per stage:")[1]  # where the run's time went, printed last
    for stage in ("start-up (Python, checks, TensorFlow)", "Prefect start", "dataset", "fine-tuning",
                  "registration", "whole run"):
        assert f"  {stage} " in timings, stage

    listed = run_cli("models", "list")
    assert listed.returncode == 0
    assert "cli-model" in listed.stdout and "latest" in listed.stdout
    documents = json.loads(run_cli("models", "list", "--json").stdout)
    assert [(d["name"], d["version"]) for d in documents] == [("cli-model", 1)]
    shown = json.loads(run_cli("models", "show", "cli-model@latest", "--json").stdout)
    assert shown == documents[0]
    assert shown["parameters"]["head_epochs"] == 2
    human = run_cli("models", "show", "cli-model:1")
    assert "test acc" in human.stdout and "gate" in human.stdout
    assert shown["metrics"]["golden"]["images"] == 90  # the run scored the golden set too
    assert shown["metrics"]["test"]["macro_f1"] is not None and shown["metrics"]["calibration"]

    evaluated = run_cli("models", "evaluate", "cli-model@latest", "--dataset", dataset)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = evaluated.stdout
    assert "cli-model:1 on " in out and "all: 90 images" in out
    for measure in ("accuracy", "macro-F1", "calibration error (ECE)", "precision", "recall"):
        assert measure in out
    assert "confusion matrix (rows: true class, columns: predicted class)" in out
    matrix = out.split("confusion matrix")[1].splitlines()[2:5]
    assert [line.split()[0] for line in matrix] == ["class_0", "class_1", "class_2"]
    assert sum(int(n) for line in matrix for n in line.split()[1:]) == 90
    as_json = json.loads(run_cli("models", "evaluate", "cli-model:1", "--dataset", dataset, "--split", "test",
                                 "--json").stdout)
    assert as_json["images"] == sum(shown["dataset"]["counts"]["test"].values())
    assert as_json["accuracy"] == pytest.approx(shown["metrics"]["test"]["accuracy"])  # the same test split


@pytest.mark.parametrize("command", [["models", "list"], ["datasets", "list"], ["datasets", "show", "x"],
                                     ["datasets", "show", "x", "--splits"],
                                     ["models", "history", "x"], ["models", "diff", "x:1", "x:2"],
                                     ["models", "pull", "x@production", "unused-dir"],
                                     ["models", "gc", "x", "--keep", "1", "--dry-run"]])
def test_inspection_commands_import_neither_tensorflow_nor_prefect(bucket, command):
    probe = (f"import sys; from transferflow.cli import main; code = main({command!r}); "
             "heavy = [m for m in ('tensorflow', 'keras', 'prefect') if m in sys.modules]; "
             "print('HEAVY', heavy); sys.exit(0)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_show_unknown_model_is_a_clear_error(bucket):
    result = run_cli("models", "show", "nobody@production")
    assert result.returncode == 1
    assert "nobody@production does not exist" in result.stderr


def test_bad_flag_values_are_refused_before_anything_runs(bucket):
    result = run_cli("train", "--image-size", "16", "--fine-tune-gate", "1.5")
    assert result.returncode == 1
    assert "--image-size: must be between 32 and 1024 pixels, or auto (got 16)" in result.stderr
    assert "--fine-tune-gate: must be an accuracy between 0 and 1, or auto (got 1.5)" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_endpoint_fails_fast_with_the_endpoint_named(tmp_path, s3_server):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1",
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    result = run_cli("train", "--dataset", str(tmp_path), "--weights", "none", env=env)
    assert result.returncode == 1
    assert "cannot reach object storage at http://127.0.0.1:9" in result.stderr


def test_datasets_prefetch_list_and_show(bucket, sample_dataset, tmp_path):
    """An operator fills the mirror from a connected machine; workers then need no internet."""
    import tarfile

    from tests.integration.test_mirror import Origin

    www = tmp_path / "www"
    www.mkdir()
    with tarfile.open(www / "shapes.tar.gz", "w:gz") as tar:
        tar.add(sample_dataset, arcname="shapes")
    origin = Origin(www)
    try:
        fetched = run_cli("datasets", "prefetch", f"{origin.base}/shapes.tar.gz", "--image-size", "40")
    finally:
        origin.stop()
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert "prepared   shapes (40px, 90 images" in fetched.stdout
    local = run_cli("datasets", "prefetch", str(sample_dataset))  # same images, another source kind
    assert local.returncode == 0, local.stderr[-3000:]

    listed = run_cli("datasets", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    # without --image-size: auto, which upscales 32 px photos to the 64 px floor
    assert sorted((row[0], row[2], row[5]) for row in rows) == [("shapes", "40px", "yes"),
                                                               ("shapes", "64px", "yes")]
    shown = run_cli("datasets", "show", "shapes")
    assert "mirror of http://127.0.0.1" in shown.stdout and "/source/shapes.tar.gz" in shown.stdout
    assert json.loads(run_cli("datasets", "show", "shapes", "--json").stdout)["variants"]
    missing = run_cli("datasets", "show", "nothing-here")
    assert missing.returncode == 1 and "transferflow datasets prefetch" in missing.stderr


def test_growing_a_dataset_moves_no_old_image_between_splits(bucket, tmp_path, capsys):
    """The issue's check: the data grows by 25% with new files; `datasets show --splits --json`
    before and after shows every old image in the split it was in. (In this process: the same
    commands as a subprocess would run, without paying TensorFlow's start-up twice more.)"""
    import shutil

    from transferflow.cli import main
    from transferflow.devstack.samples import write_dataset

    def shown() -> dict:
        capsys.readouterr()
        assert main(["datasets", "show", str(root), "--splits", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    root = write_dataset(tmp_path / "growing", classes=3, per_class=60)
    assert main(["datasets", "prefetch", str(root)]) == 0
    before = shown()
    extra = write_dataset(tmp_path / "extra", classes=3, per_class=15, seed=1)
    for path in sorted(extra.rglob("*.*")):
        shutil.move(path, root / path.parent.name / f"new_{path.name}")
    assert main(["datasets", "prefetch", str(root)]) == 0
    after = shown()

    assert after["fingerprint"] != before["fingerprint"] and len(after["images"]) == 225
    assert not any(row["borrowed"] for row in before["images"])  # no exception in play: all are strict
    old = {row["name"]: (row["split"], row["digest"]) for row in before["images"]}
    now = {row["name"]: (row["split"], row["digest"]) for row in after["images"]}
    assert {name: now[name] for name in old} == old
    assert {split for name, (split, _) in now.items() if name not in old} == {"train", "val", "test"}
