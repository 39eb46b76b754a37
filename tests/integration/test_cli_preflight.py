"""`transferflow train` refuses what it can know before Prefect and TensorFlow load, and the
commands that load TensorFlow keep its C++ start-up lines out of their output."""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from transferflow import storage

NOISE = ("oneDNN custom operations", "cuInit", "cudart_stub", "absl::InitializeLog")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
    return subprocess.run([sys.executable, "-m", "transferflow.cli", *args], capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=timeout)


def without_tf_log_level(**extra: str) -> dict[str, str]:
    """The environment of a user who has not set TF_CPP_MIN_LOG_LEVEL (the test session has)."""
    return {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, **extra}


def test_a_missing_local_dataset_is_refused_in_seconds(s3_server, tmp_path):
    missing = tmp_path / "no-such-folder"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    result = cli("train", "--dataset", str(missing), "--weights", "none", env=env, timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: --dataset '{missing}' does not exist: pass a built-in name (cifar10" in result.stderr
    # How fast: bench/refusal_bench.py. Here: refused before the flow, so no Prefect run log.
    assert "Beginning flow run" not in result.stdout + result.stderr


def write_weights(path, keep_bytes: int | None = None):
    """An HDF5 file, cut to its first `keep_bytes` bytes when given (an interrupted copy)."""
    with h5py.File(path, "w") as handle:
        handle["vars/0"] = np.zeros((256, 256), np.float32)
    if keep_bytes is not None:
        path.write_bytes(path.read_bytes()[:keep_bytes])
    return path


def test_inputs_knowable_before_the_flow_are_refused_without_loading_prefect_or_tensorflow(
        bucket, sample_dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    storage.put_bytes(bucket, "other/x.png", b"x", "image/png")
    cut = write_weights(tmp_path / "cut.weights.h5", keep_bytes=4000)
    cases = [  # (flags, what the error must say)
        (["--dataset", f"{tmp_path}/missing"], f"--dataset '{tmp_path}/missing' does not exist: pass"),
        (["--dataset", f"file://{tmp_path}/notes.txt"], "is a file but not an archive (.tar.gz, .tgz, "
                                                        ".tar, .zip): pass the folder or archive"),
        (["--dataset", "https:///shapes.tar.gz"], "--dataset https:///shapes.tar.gz names no host"),
        (["--dataset", "https://example.org:http/a.tgz"], "--dataset https://example.org:http/a.tgz is "
                                                          "not a valid URL"),
        (["--dataset", "https://example.org/shapes"], "is not an archive URL (.tar.gz, .tgz, .tar, .zip)"),
        (["--dataset", "https://example.org/a.tgz#sha256=xyz"], "--dataset: URL fragment #sha256=xyz: a "
                                                                "sha256 digest is 64 hex digits"),
        (["--dataset", "ftp://example.org/a.tgz"], "--dataset ftp://example.org/a.tgz: ftp:// is not a "
                                                   "supported source; pass"),
        (["--dataset", f"s3://{bucket}/nothing/"], f"--dataset s3://{bucket}/nothing/ holds no objects"),
        (["--weights", f"{tmp_path}/none.weights.h5"], f"--weights {tmp_path}/none.weights.h5 does not "
                                                        "exist: pass imagenet, none, or the local path"),
        (["--weights", str(cut)], f"--weights {cut} is damaged: it is truncated (4,000 bytes of the "),
        (["--weights", f"s3://{bucket}/w/none.weights.h5"], f"--weights s3://{bucket}/w/none.weights.h5 "
                                                            "does not exist at http://127.0.0.1"),
    ]
    runs = [["train", *flags] + ([] if "--dataset" in flags else ["--dataset", str(sample_dataset)])
            + ([] if "--weights" in flags else ["--weights", "none"]) for flags, _ in cases]
    probe = ("import contextlib, io, json, sys\nfrom transferflow.cli import main\nout = []\n"
             f"for argv in {runs!r}:\n"
             "    err = io.StringIO()\n"
             "    with contextlib.redirect_stderr(err):\n"
             "        code = main(argv)\n"
             "    out.append([code, err.getvalue()])\n"
             "heavy = [m for m in ('tensorflow', 'keras', 'prefect') if m in sys.modules]\n"
             "print(json.dumps({'runs': out, 'heavy': heavy}))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    for (flags, phrase), (code, err) in zip(cases, report["runs"], strict=True):
        assert code == 1 and phrase in err, (flags, err)
    assert report["heavy"] == []  # refused before TensorFlow or Prefect loaded: in about a second
    assert [o["Key"] for o in storage.list_keys(bucket, "")] == ["other/x.png"]  # nothing ran


def test_predict_keeps_tensorflow_start_up_lines_out_unless_asked(bucket, tmp_path):
    """`predict` loads TensorFlow before it looks the model up: a missing model shows the output."""
    image = tmp_path / "x.png"
    image.write_bytes(b"unused")
    quiet = cli("predict", "nobody@production", str(image), env=without_tf_log_level())
    assert quiet.returncode == 1 and "nobody@production does not exist" in quiet.stderr
    assert [line for line in (quiet.stdout + quiet.stderr).splitlines()
            if any(noise in line for noise in NOISE)] == []
    for asked in (cli("--verbose", "predict", "nobody@production", str(image), env=without_tf_log_level()),
                  cli("predict", "nobody@production", str(image), env=without_tf_log_level(
                      TF_CPP_MIN_LOG_LEVEL="0"))):
        assert asked.returncode == 1 and any(noise in asked.stderr for noise in NOISE)


@pytest.mark.slow
def test_train_output_has_no_tensorflow_start_up_lines(bucket, sample_dataset, tmp_path):
    """A run that gets as far as building the backbone (TensorFlow loaded, devices set up), then
    fails on weights of another architecture."""
    import keras

    wrong = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(str(wrong))
    env = without_tf_log_level(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL="")
    result = cli("train", "--dataset", str(sample_dataset), "--weights", str(wrong), env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "does not fit backbone vgg16" in output, output[-3000:]
    assert [line for line in output.splitlines() if any(noise in line for noise in NOISE)] == []
