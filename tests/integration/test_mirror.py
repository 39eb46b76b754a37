"""The object-storage mirror: after one download, runs (and workers without internet) read
remote sources from S3, even with the origin server gone."""

import dataclasses
import hashlib
import http.server
import tarfile
import threading
from functools import partial

import numpy as np
import pytest

from transferflow import storage
from transferflow.data import PrepareOptions, builtins, mirror, prepare_dataset
from transferflow.errors import DownloadError

OPTIONS = PrepareOptions(image_size=32, val_fraction=0.1, test_fraction=0.1, seed=0)


class Origin:
    """A local HTTP server for one folder, which a test can stop (the internet going away)."""

    def __init__(self, root):
        self.root, self.hits = root, []
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                hits.append(f"{self.command} {self.path}")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      partial(Handler, directory=str(root)))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin(tmp_path, sample_dataset):
    root = tmp_path / "www"
    root.mkdir()
    with tarfile.open(root / "shapes.tar.gz", "w:gz") as tar:
        tar.add(sample_dataset, arcname="shapes")
    server = Origin(root)
    yield server
    server.stop()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A worker that has never seen the data: an empty local cache."""
    def switch(name: str):
        monkeypatch.setenv("TRANSFERFLOW_CACHE_DIR", str(tmp_path / name))
    return switch


def test_a_pinned_url_is_read_from_the_mirror_once_the_origin_is_gone(bucket, origin, fresh_cache):
    digest = hashlib.sha256((origin.root / "shapes.tar.gz").read_bytes()).hexdigest()
    url = f"{origin.base}/shapes.tar.gz#sha256={digest}"
    first = prepare_dataset(url, OPTIONS)
    [entry] = mirror.entries(bucket)
    assert entry["source"] == url and entry["fingerprint"] == first.fingerprint
    assert entry["files"][0]["uri"] == f"s3://{bucket}/datasets/shapes/{first.fingerprint[:16]}/source/shapes.tar.gz"
    origin.stop()

    fresh_cache("worker-b")  # same options: the prepared copy is found, nothing is downloaded
    assert prepare_dataset(url, OPTIONS) == first
    fresh_cache("worker-c")  # other options: the raw archive comes from the mirror
    other = prepare_dataset(url, dataclasses.replace(OPTIONS, image_size=40))
    assert other.fingerprint == first.fingerprint and other.image_size == 40


def test_an_unpinned_url_follows_its_origin_and_falls_back_to_the_mirror(bucket, origin, sample_dataset,
                                                                          fresh_cache, caplog):
    caplog.set_level("INFO")
    url = f"{origin.base}/shapes.tar.gz"
    first = prepare_dataset(url, OPTIONS)
    fresh_cache("unchanged")
    assert prepare_dataset(url, OPTIONS) == first
    assert "is unchanged since" in caplog.text and origin.hits.count("GET /shapes.tar.gz") == 1

    with tarfile.open(origin.root / "shapes.tar.gz", "w:gz") as tar:  # the publisher updates it
        tar.add(sample_dataset / "class_0", arcname="shapes/class_0")
        tar.add(sample_dataset / "class_1", arcname="shapes/class_1")
    fresh_cache("changed")
    changed = prepare_dataset(url, OPTIONS)
    assert changed.class_names == ["class_0", "class_1"] and "changed since it was mirrored" in caplog.text

    origin.stop()
    fresh_cache("offline")
    assert prepare_dataset(url, OPTIONS) == changed
    assert "does not answer: using its mirror" in caplog.text


def test_without_origin_or_mirror_the_error_says_what_to_do(bucket, origin, fresh_cache, monkeypatch):
    monkeypatch.setattr("transferflow.data.downloads.time.sleep", lambda seconds: None)  # skip the backoff
    origin.stop()
    with pytest.raises(DownloadError, match="without internet"):
        prepare_dataset(f"{origin.base}/shapes.tar.gz", OPTIONS)


def test_a_builtin_downloads_verifies_mirrors_and_then_needs_no_internet(bucket, tmp_path, monkeypatch,
                                                                          fresh_cache):
    """MNIST's real file format, served locally with a real checksum, through prepare_dataset."""
    import gzip

    root = tmp_path / "www"
    root.mkdir()
    rng = np.random.default_rng(0)
    labels = {"train": np.repeat(np.arange(10), 4).astype(np.uint8), "t10k": np.arange(10, dtype=np.uint8)}
    for split, y in labels.items():
        x = rng.integers(0, 256, (len(y), 28, 28), dtype=np.uint8)
        images = np.array([2051, len(y), 28, 28], ">u4").tobytes() + x.tobytes()
        (root / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (root / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(np.array([2049, len(y)], ">u4").tobytes() + y.tobytes()))
    server = Origin(root)
    real = builtins.BUILTINS["mnist"]
    def served(remote):
        path = root / remote.filename
        return dataclasses.replace(remote, url=f"{server.base}/{remote.filename}",
                                   sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                                   size=path.stat().st_size)

    local_files = tuple(served(remote) for remote in real.files)
    monkeypatch.setitem(builtins.BUILTINS, "mnist", dataclasses.replace(real, files=local_files))
    try:
        ref = prepare_dataset("mnist", OPTIONS)
    finally:
        server.stop()
    assert ref.class_names == [str(i) for i in range(10)] and ref.split_origin == {"val": "carved",
                                                                                  "test": "given"}
    assert sum(ref.counts["test"].values()) == 10
    fresh_cache("no-internet")
    assert prepare_dataset("mnist", dataclasses.replace(OPTIONS, image_size=36)).image_size == 36
    assert storage.list_keys(bucket, "datasets/mnist/")
