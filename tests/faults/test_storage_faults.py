"""The object store dies mid-write: nothing half-written becomes visible, and a retry after
the store comes back finishes the job (or resumes it)."""

import hashlib
import logging
import os
import secrets

import numpy as np
import pytest

from transferflow import storage
from transferflow.devstack import s3server
from transferflow.errors import StorageError
from transferflow.registry import Registry
from transferflow.training.checkpoints import POINTER


class Store:
    """A SeaweedFS of this test's own, which the test may kill and start again on the same port."""

    def __init__(self, root, monkeypatch):
        self.root, self.key, self.secret = root, "fault-access", "fault-" + secrets.token_hex(8)
        self.server = s3server.start(root, access_key=self.key, secret_key=self.secret)
        for name, value in {**self.server.env(), "AWS_MAX_ATTEMPTS": "2"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("TRANSFERFLOW_BUCKET", "faults")
        storage.ensure_bucket("faults")

    def kill(self):
        self.server.process.kill()
        self.server.process.wait()

    def restart(self):
        self.server = s3server.start(self.root, self.server.port, access_key=self.key, secret_key=self.secret,
                                     isolated=True)

    def stop(self):
        s3server.stop_process(self.server.process)


@pytest.fixture
def store(tmp_path, monkeypatch):
    running = Store(tmp_path / "weed", monkeypatch)
    yield running
    running.stop()


def staged(payload: bytes) -> tuple[str, str, int]:
    storage.client().put_object(Bucket="faults", Key="runs/r1/model.keras", Body=payload)
    return "s3://faults/runs/r1/model.keras", hashlib.sha256(payload).hexdigest(), len(payload)


def test_store_killed_while_a_version_is_published(store, monkeypatch):
    """Killed after the artifact copy, before metadata: no version, no alias; the retry wins."""
    uri, sha, size = staged(b"model bytes" * 1000)
    real_copy = storage.copy_object

    def copy_then_die(*args, **kwargs):
        real_copy(*args, **kwargs)
        store.kill()

    monkeypatch.setattr(storage, "copy_object", copy_then_die)
    with pytest.raises(StorageError, match="cannot reach object storage at http://127.0.0.1"):
        Registry().register("m", uri, sha, size, {"metrics": {}}, "r1")
    monkeypatch.setattr(storage, "copy_object", real_copy)
    store.restart()
    registry = Registry()
    assert registry.versions("m") == [] and registry.aliases("m") == {}  # nothing half-written shows
    version = registry.register("m", uri, sha, size, {"metrics": {}}, "r1")  # the task's retry
    assert version.version == 1 and registry.aliases("m") == {"latest": 1}


def test_store_killed_during_a_checkpoint_write_resumes_from_the_last_good_one(store, monkeypatch):
    import keras

    from transferflow.training import checkpoints
    from transferflow.training.fit import fit_phase

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)).astype("float32"), rng.integers(0, 3, 60).astype("int32")

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])

    settings = dict(learning_rate=0.05, batch_size=16, patience=10, seed=0, logger=logging.getLogger("t"),
                    checkpoint_uri="s3://faults/runs/r2/checkpoints/head")
    real_upload, uploads = storage.upload_file, []

    def upload_until_the_third(*args, **kwargs):
        uploads.append(args[2])
        if len(uploads) == 3:
            store.kill()  # the store dies as the third epoch's checkpoint is written
        return real_upload(*args, **kwargs)

    monkeypatch.setattr(checkpoints.storage, "upload_file", upload_until_the_third)
    with pytest.raises(StorageError):
        fit_phase(model(), "head", (x, y), (x, y), epochs=5, **settings)
    monkeypatch.setattr(checkpoints.storage, "upload_file", real_upload)
    store.restart()
    assert storage.get_json("faults", f"runs/r2/checkpoints/head/{POINTER}")[0]["epoch"] == 2

    resumed = fit_phase(model(), "head", (x, y), (x, y), epochs=5, **settings)  # the task's retry
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == 5


def test_unfinished_multipart_uploads_are_aborted(store):
    client = storage.client()
    upload = client.create_multipart_upload(Bucket="faults", Key="runs/r3/big.keras")
    client.upload_part(Bucket="faults", Key="runs/r3/big.keras", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"x" * (5 << 20))
    assert storage.abort_stale_uploads("faults", older_than_s=3600) == 0  # a live upload is left alone
    assert storage.abort_stale_uploads("faults", older_than_s=0) == 1
    assert client.list_multipart_uploads(Bucket="faults").get("Uploads", []) == []


def test_stale_uploads_beyond_one_page_are_all_aborted(store):
    """S3 lists at most 1000 uploads a page: with pages of 2, 5 uploads take three pages."""
    client = storage.client()
    for index in range(5):
        client.create_multipart_upload(Bucket="faults", Key=f"runs/r4/part-{index}.keras")
    first = client.list_multipart_uploads(Bucket="faults", MaxUploads=2)
    assert len(first.get("Uploads", [])) == 2 and first["IsTruncated"]  # the store pages as S3 does
    assert storage.abort_stale_uploads("faults", older_than_s=0, page_size=2) == 5
    assert client.list_multipart_uploads(Bucket="faults").get("Uploads", []) == []


def test_a_store_that_stays_down_fails_fast_naming_the_endpoint(store):
    from transferflow.pipeline import phases

    store.kill()
    sent = []
    storage.client().meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    with pytest.raises(StorageError, match=f"cannot reach object storage at {store.server.endpoint}"):
        phases.check_storage()
    # Fails after the AWS_MAX_ATTEMPTS tries of its first request or two, not a retry loop.
    assert 1 <= len(sent) <= 2 * int(os.environ["AWS_MAX_ATTEMPTS"]), sent
