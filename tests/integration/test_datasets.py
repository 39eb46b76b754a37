"""The dataset stage against real servers: SeaweedFS for s3://, a local HTTP server for URLs."""

import contextlib
import hashlib
import http.server
import tarfile
import threading
from functools import partial

import numpy as np
import pytest

from tests.conftest import upload_folder
from transferflow import localcache, storage
from transferflow.data import PrepareOptions, load_prepared, prepare_dataset, read_membership, remote_source
from transferflow.devstack.samples import write_dataset
from transferflow.errors import (
    ChecksumError,
    DatasetError,
    PermanentChecksumError,
    PermanentDownloadError,
    PermanentError,
)

OPTIONS = PrepareOptions(image_size=32, val_fraction=0.1, test_fraction=0.1, seed=0)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory, sample_dataset):
    """A local HTTP server holding a .tar.gz of the sample dataset; counts its requests."""
    root = tmp_path_factory.mktemp("www")
    with tarfile.open(root / "shapes.tar.gz", "w:gz") as tar:
        tar.add(sample_dataset, arcname="shapes")
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", root, hits
    server.shutdown()


def test_local_folder_is_prepared_split_and_stored(bucket, sample_dataset):
    ref = prepare_dataset(str(sample_dataset), OPTIONS)
    assert ref.class_names == ["class_0", "class_1", "class_2"]
    assert ref.split_origin == {"val": "carved", "test": "carved"}
    assert sum(sum(c.values()) for c in ref.counts.values()) == 90
    assert all(len(ref.counts[split]) == 3 for split in ("train", "val", "test"))  # every class in each
    assert ref.uri.startswith(f"s3://{bucket}/datasets/shapes/{ref.fingerprint[:16]}/")
    data = load_prepared(ref)
    x, y = data.splits["train"]
    train = sum(ref.counts["train"].values())
    assert x.shape == (train, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [ref.counts["train"][name] for name in ref.class_names]


def test_the_membership_sidecar_lists_every_stored_image_in_order(bucket, sample_dataset):
    ref = prepare_dataset(str(sample_dataset), OPTIONS)
    membership = read_membership(ref.membership)
    data = load_prepared(ref)
    for split, (_, y) in data.splits.items():
        entry = membership.splits[split]
        assert entry["labels"] == y.tolist()  # the stored order
        for name, digest in zip(entry["names"], entry["digests"], strict=True):
            assert hashlib.sha256((sample_dataset / name).read_bytes()).hexdigest() == digest
    assert ref.membership.images == 90 == len({row["name"] for row in membership.rows()})


def test_second_preparation_reuses_the_stored_copy(bucket, sample_dataset, caplog):
    first = prepare_dataset(str(sample_dataset), OPTIONS)
    caplog.set_level("INFO")
    again = prepare_dataset(str(sample_dataset), OPTIONS)
    assert again == first
    assert "already prepared" in caplog.text


def test_s3_folder_gives_the_same_fingerprint_as_the_local_one(bucket, sample_dataset):
    uri = upload_folder(sample_dataset, bucket, "sources/shapes")
    from_s3 = prepare_dataset(uri, OPTIONS)
    local = prepare_dataset(str(sample_dataset), OPTIONS)
    assert from_s3.fingerprint == local.fingerprint
    assert from_s3.counts == local.counts


def test_objects_removed_from_s3_are_not_trained_on(bucket, sample_dataset):
    uri = upload_folder(sample_dataset, bucket, "sources/shrinking")
    assert len(prepare_dataset(uri, OPTIONS).class_names) == 3
    storage.delete_prefix(bucket, "sources/shrinking/class_2/")
    assert prepare_dataset(uri, OPTIONS).class_names == ["class_0", "class_1"]


def test_missing_local_dataset_is_named(bucket, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match=f"dataset '{missing}' does not exist"):
        prepare_dataset(str(missing), OPTIONS)


def test_missing_s3_prefix_is_named(bucket):
    with pytest.raises(DatasetError, match=f"s3://{bucket}/no/such/ has no objects"):
        prepare_dataset(f"s3://{bucket}/no/such/", OPTIONS)


def test_too_many_corrupt_images_fail_before_anything_is_stored(bucket, tmp_path, sample_dataset):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(sample_dataset, root)
    (root / "class_1" / "zz_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "class_2" / "zz_noise.png").write_bytes(b"noise")
    with pytest.raises(DatasetError, match=r"2 of 92 images \(2.2%\) are corrupt .* limit of 1.0%: "
                                           r"class_1/zz_truncated.jpg, class_2/zz_noise.png"):
        prepare_dataset(str(root), OPTIONS)
    assert list(storage.list_keys(bucket, "datasets/")) == []


def test_a_few_corrupt_images_are_skipped_and_counted(bucket, tmp_path, sample_dataset, caplog):
    import shutil

    root = tmp_path / "mostly-fine"
    shutil.copytree(sample_dataset, root)
    (root / "class_1" / "zz_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    caplog.set_level("INFO")
    options = PrepareOptions(**{**OPTIONS.__dict__, "max_bad_fraction": 0.05})
    ref = prepare_dataset(str(root), options)
    assert sum(sum(c.values()) for c in ref.counts.values()) == 90  # 91 files, 1 skipped
    assert "skipped 1 corrupt or unreadable images of 91: class_1/zz_truncated.jpg" in caplog.text


def test_http_archive_with_good_checksum(bucket, http_root):
    base, root, hits = http_root
    digest = hashlib.sha256((root / "shapes.tar.gz").read_bytes()).hexdigest()
    ref = prepare_dataset(f"{base}/shapes.tar.gz#sha256={digest}", OPTIONS)
    assert ref.class_names == ["class_0", "class_1", "class_2"]
    assert "/shapes.tar.gz" in hits


def test_http_archive_with_bad_checksum_is_refused(bucket, http_root):
    """The same wrong bytes twice: permanent, so a third download is never tried; nothing is kept."""
    base, _, hits = http_root
    url = f"{base}/shapes.tar.gz#sha256={'0' * 64}"
    before = hits.count("/shapes.tar.gz")
    with pytest.raises(PermanentChecksumError, match="checksum mismatch.*expected sha256 " + "0" * 64
                       + ", got [0-9a-f]{64} on two downloads: permanent, not retried"):
        prepare_dataset(url, OPTIONS)
    assert hits.count("/shapes.tar.gz") - before == 2
    folder = localcache.cache_dir() / "downloads" / remote_source(url).source_id[:16]
    assert folder.is_dir() and list(folder.iterdir()) == []  # no file, .part or .validator left
    assert list(storage.list_keys(bucket, "")) == []


def test_unknown_host_fails_at_once_naming_it(bucket, monkeypatch):
    sleeps = []
    monkeypatch.setattr("transferflow.data.downloads.time.sleep", sleeps.append)
    with pytest.raises(PermanentDownloadError, match="download of http://example.invalid/shapes.tar.gz "
                       "failed: cannot resolve host example.invalid: permanent, not retried"):
        prepare_dataset("http://example.invalid/shapes.tar.gz", OPTIONS)
    assert sleeps == []  # no backoff: the stage fails as fast as the DNS answers


def test_wrapped_archive_with_splits_over_http(bucket, http_root, tmp_path):
    """`tar -czf splits.tar.gz -C parent splits`, splits/ holding train/ and test/: the wrapper is
    looked through, and the fingerprint is that of the same folder unwrapped."""
    base, root, _ = http_root
    folder = write_dataset(tmp_path / "splits", classes=2, per_class=12, splits=("train", "test"))
    with tarfile.open(root / "splits.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="splits")
    digest = hashlib.sha256((root / "splits.tar.gz").read_bytes()).hexdigest()
    ref = prepare_dataset(f"{base}/splits.tar.gz#sha256={digest}", OPTIONS)
    assert ref.class_names == ["class_0", "class_1"]
    assert ref.split_origin == {"val": "carved", "test": "given"}
    assert sum(ref.counts["train"].values()) + sum(ref.counts["val"].values()) == 24
    assert sum(ref.counts["test"].values()) == 24 and len(ref.counts["val"]) == 2
    assert ref.fingerprint == prepare_dataset(str(folder), OPTIONS).fingerprint


def test_wrapped_folder_with_splits_on_s3(bucket, tmp_path):
    write_dataset(tmp_path / "parent" / "splits", classes=2, per_class=3, splits=("train", "val"))
    ref = prepare_dataset(upload_folder(tmp_path / "parent", bucket, "sources/wrapped"), OPTIONS)
    assert ref.split_origin == {"val": "given", "test": "carved"}
    assert ref.fingerprint == prepare_dataset(str(tmp_path / "parent" / "splits"), OPTIONS).fingerprint


@contextlib.contextmanager
def scripted_server(payload: bytes, script: list):
    """An HTTP server whose n-th GET does script[n]: 500 (an error), a fraction (send that share
    of the body, then drop the connection), 1 (the whole rest), or bytes (send them instead of
    the payload: a damaged copy). Honours Range; yields (url, the byte offset each request asked for)."""
    seen = []

    class Scripted(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-") or 0)
            seen.append(start)
            action = script[min(len(seen), len(script)) - 1]
            if action == 500:
                self.send_error(500, "overloaded")
                return
            data, share = (action, 1) if isinstance(action, bytes) else (payload, action)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            body = data[start:]
            self.wfile.write(body[: int(len(body) * share)])

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/blob.tar", seen
    finally:
        server.shutdown()


def test_download_resumes_after_a_dropped_connection(tmp_path):
    """A server that cuts the first response short: the retry asks for the rest (Range)."""
    from transferflow.data.downloads import Checksum, download

    payload = bytes(range(256)) * 4000
    with scripted_server(payload, [0.5, 1]) as (url, requests):
        digest = Checksum("sha256", hashlib.sha256(payload).hexdigest())
        path = download(url, tmp_path / "blob.tar", digest)
    assert path.read_bytes() == payload
    assert requests[0] == 0 and requests[1] == len(payload) // 2


def test_download_retries_server_errors_then_resumes(tmp_path, caplog):
    """500, then a connection dropped mid-body, then the rest: one verified file."""
    from transferflow.data.downloads import Checksum, download

    payload = bytes(range(256)) * 3000
    caplog.set_level("INFO")
    with scripted_server(payload, [500, 1 / 3, 1]) as (url, seen):
        path = download(url, tmp_path / "data.tar", Checksum("sha256", hashlib.sha256(payload).hexdigest()))
    assert path.read_bytes() == payload
    assert seen == [0, 0, len(payload) // 3]
    assert "HTTP Error 500" in caplog.text and "connection closed at" in caplog.text


def test_http_missing_file_fails_at_once(bucket, http_root, monkeypatch):
    base, _, hits = http_root
    before, sleeps = hits.count("/missing.tar.gz"), []
    monkeypatch.setattr("transferflow.data.downloads.time.sleep", sleeps.append)
    with pytest.raises(PermanentDownloadError, match="download of .*/missing.tar.gz failed: HTTP 404 "
                                                     "File not found: permanent, not retried. Check the URL"):
        prepare_dataset(f"{base}/missing.tar.gz#sha256={'0' * 64}", OPTIONS)
    assert sleeps == []
    assert hits.count("/missing.tar.gz") - before == 2  # one GET: http.server logs a 404 twice


def test_bytes_damaged_once_are_downloaded_once_more(tmp_path, caplog):
    from transferflow.data.downloads import Checksum, download

    payload = bytes(range(256)) * 1000
    caplog.set_level("WARNING")
    with scripted_server(payload, [b"damaged in transit", 1]) as (url, seen):
        path = download(url, tmp_path / "blob.tar", Checksum("sha256", hashlib.sha256(payload).hexdigest()))
    assert path.read_bytes() == payload and seen == [0, 0]
    assert "checksum mismatch" in caplog.text and "downloading it once more" in caplog.text


def test_bytes_damaged_differently_twice_stay_transient(tmp_path):
    from transferflow.data.downloads import Checksum, download

    payload = bytes(range(256)) * 1000
    with scripted_server(payload, [b"damaged once", b"damaged twice", 1]) as (url, seen):
        with pytest.raises(ChecksumError, match="the bytes differ on each download.*transient") as info:
            download(url, tmp_path / "blob.tar", Checksum("sha256", hashlib.sha256(payload).hexdigest()))
    assert not isinstance(info.value, PermanentError) and seen == [0, 0]
    assert list(tmp_path.iterdir()) == []


def test_the_dataset_cache_key_changes_when_the_store_is_wiped(bucket, sample_dataset):
    """Prefect caches the dataset stage outside the store: after `make clean` or a wiped bucket its
    cached result would name a prepared copy that is gone."""
    from transferflow.config import RetrainConfig
    from transferflow.pipeline import phases

    config = RetrainConfig(dataset=str(sample_dataset), weights="none")
    first = phases.dataset_cache_key(config)
    assert phases.dataset_cache_key(config) == first
    storage.delete_prefix(bucket, "")
    assert phases.dataset_cache_key(config) != first
