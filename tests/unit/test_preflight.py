"""Checks that need no server: local dataset and weights paths, damaged weights files, and
errors about several fields together written in the terms of whoever called (flags on the CLI)."""

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from transferflow import cli
from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError, DatasetError, WeightsError
from transferflow.pipeline.preflight import check_dataset, check_weights, preflight
from transferflow.training.backbones import damaged_weights


def weights_file(path, keep_bytes: int | None = None):
    with h5py.File(path, "w") as handle:
        handle["vars/0"] = np.ones((128, 128), np.float32)
    if keep_bytes is not None:
        path.write_bytes(path.read_bytes()[:keep_bytes])
    return path


def test_datasets_that_exist_or_need_no_path_pass(tmp_path):
    (tmp_path / "shapes.tar.gz").write_bytes(b"checked when extracted, not here")
    for dataset in ("cifar10", str(tmp_path), f"file://{tmp_path}", str(tmp_path / "shapes.tar.gz"),
                    "https://example.org/data/shapes.tar.gz#sha256=" + "a" * 64):
        check_dataset(dataset)


def test_the_python_api_names_the_parameter_and_the_cli_the_flag(tmp_path):
    missing = RetrainConfig(dataset=str(tmp_path / "gone"), weights="none")
    with pytest.raises(DatasetError, match=r"^dataset '.*gone' does not exist: pass a built-in name"):
        preflight(missing)
    with pytest.raises(DatasetError, match=r"^--dataset '.*gone' does not exist"):
        preflight(missing, as_flags=True)


@pytest.mark.parametrize("dataset, phrase", [
    ("gs://bucket/shapes/", "dataset gs://bucket/shapes/: gs:// is not a supported source; pass a built-in"),
    ("http://:80/shapes.tar.gz", "names no host"),
    ("https://example.org/shapes.tar.gz#md5=abc", "URL fragment #md5=abc: a md5 digest is 32 hex digits"),
])
def test_malformed_dataset_uris_are_refused(dataset, phrase):
    with pytest.raises(DatasetError, match=phrase):
        check_dataset(dataset)


def test_weights_are_refused_when_missing_a_folder_or_damaged(tmp_path):
    check_weights("imagenet")
    check_weights(str(weights_file(tmp_path / "good.weights.h5")))
    with pytest.raises(WeightsError, match=f"weights {tmp_path} is a folder: pass imagenet, none"):
        check_weights(str(tmp_path))
    with pytest.raises(WeightsError, match="weights gs://b/w.weights.h5: gs:// is not supported; pass"):
        check_weights("gs://b/w.weights.h5")
    cut = weights_file(tmp_path / "cut.weights.h5", keep_bytes=3000)
    with pytest.raises(WeightsError, match=r"is damaged: it is truncated \(3,000 bytes of the [0-9,]+ its "
                                           r"header records; an interrupted download or copy\?\)\. Download "
                                           r"or save it again"):
        check_weights(f"file://{cut}")


def test_damaged_weights_says_what_is_wrong_with_the_file(tmp_path):
    assert damaged_weights(weights_file(tmp_path / "good.weights.h5")) is None
    (tmp_path / "page.weights.h5").write_text("<html>404 Not Found</html>")  # a saved error page
    assert damaged_weights(tmp_path / "page.weights.h5") == (
        "it is not an HDF5 file (.weights.h5 files are HDF5)")
    assert damaged_weights(weights_file(tmp_path / "cut.weights.h5", keep_bytes=5000)).startswith(
        "it is truncated (5,000 bytes of the ")


def test_checks_of_several_fields_name_flags_on_the_command_line():
    with pytest.raises(ConfigError, match="invalid parameters: --image-size 32 is below xception's "
                                          "minimum 71: set --image-size to at least 71"):
        cli.parse_config({"backbone": "xception", "image_size": 32})
    with pytest.raises(ConfigError, match=r"--val-fraction \+ --test-fraction must stay below 0.8"):
        cli.parse_config({"val_fraction": 0.45, "test_fraction": 0.4})
    with pytest.raises(ConfigError, match="--fine-tune-blocks 9 must be between 1 and vgg16's 5 blocks"):
        cli.parse_config({"fine_tune_blocks": 9})
    with pytest.raises(ValidationError, match="image_size 32 is below xception's minimum 71: set "
                                              "image_size"):  # the Python API keeps field names
        RetrainConfig(backbone="xception", image_size=32)


def test_as_flags_rewrites_field_names_only():
    assert cli.as_flags("set image_size, not --image-size or image_sizes; dataset stays a word") == (
        "set --image-size, not --image-size or image_sizes; dataset stays a word")


def test_an_unmirrored_source_on_a_host_that_does_not_resolve_is_refused_before_the_flow(monkeypatch):
    import socket

    from transferflow import storage
    from transferflow.errors import PermanentDownloadError
    from transferflow.pipeline.preflight import check_dataset

    monkeypatch.setattr(storage, "get_json", lambda bucket, key: None)  # nothing mirrored
    with pytest.raises(PermanentDownloadError, match=r"--dataset http://example.invalid/x.tar.gz: cannot "
                       r"resolve host example.invalid: permanent, not retried. It is not mirrored"):
        check_dataset("http://example.invalid/x.tar.gz", "--dataset")

    def offline(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    with pytest.raises(PermanentDownloadError, match="cifar10: cannot resolve host www.cs.toronto.edu"):
        check_dataset("cifar10", "--dataset")
    monkeypatch.setattr(storage, "get_json", lambda bucket, key: ({"fingerprint": "f"}, "etag"))
    check_dataset("cifar10", "--dataset")  # mirrored: workers without internet train from the mirror
