"""A store that has just started: SeaweedFS answers S3 requests before its master knows the
volumes on disk, and reads of the objects in them fail with InternalError ("volume N not
found") for a few seconds. s3server.start waits that out; the client retries it and, when a
store never recovers, says what is going on."""

import secrets
import time

import boto3
import pytest
from botocore.config import Config

from transferflow import storage
from transferflow.devstack import s3server, stack
from transferflow.errors import StorageError

KEY = "startup-access"


def raw_client(server: s3server.LocalS3):
    """One attempt per request: a read must succeed the first time."""
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def fill(server: s3server.LocalS3, buckets: int, per_bucket: int) -> dict[tuple[str, str], bytes]:
    """Objects in several buckets: SeaweedFS gives each bucket volumes of its own."""
    s3, stored = raw_client(server), {}
    for b in range(buckets):
        s3.create_bucket(Bucket=f"held-{b}")
        for i in range(per_bucket):
            stored[f"held-{b}", f"obj-{i}"] = body = secrets.token_bytes(2000)
            s3.put_object(Bucket=f"held-{b}", Key=f"obj-{i}", Body=body)
    return stored


def test_a_restarted_store_serves_every_object_once_start_returns(tmp_path):
    """Restarted on the same ports (as `make storage-up` is), the master comes back with its state
    and, now and then, takes seconds to learn the volumes: start() must not return before."""
    secret = "startup-" + secrets.token_hex(8)
    server = s3server.start(tmp_path / "weed", access_key=KEY, secret_key=secret)
    try:
        stored = fill(server, buckets=6, per_bucket=2)
        for _ in range(4):
            s3server.stop_process(server.process)
            server = s3server.start(tmp_path / "weed", server.port, access_key=KEY, secret_key=secret,
                                    isolated=True)
            s3 = raw_client(server)
            for (bucket, key), body in stored.items():
                assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
            assert s3server.volumes_on_disk(tmp_path / "weed") <= s3server.volumes_registered(server)
    finally:
        s3server.stop_process(server.process)


def test_a_store_that_keeps_answering_internal_error_is_retried_then_named(tmp_path, monkeypatch):
    """A volume lost from disk: the store answers InternalError for its objects, as it does while
    loading volumes. The client keeps trying for TRANSFERFLOW_S3_WARMUP_S, then says why."""
    secret = "startup-" + secrets.token_hex(8)
    root = tmp_path / "weed"
    server = s3server.start(root, access_key=KEY, secret_key=secret)
    fill(server, buckets=1, per_bucket=1)
    s3server.stop_process(server.process)
    lost = tmp_path / "lost"
    lost.mkdir()
    for path in root.glob("held-0_*"):  # the bucket's volume: .dat, .idx, .vif
        path.rename(lost / path.name)
    server = s3server.start(root, server.port, access_key=KEY, secret_key=secret, isolated=True)
    try:
        for name, value in {**server.env(), "TRANSFERFLOW_S3_WARMUP_S": "4"}.items():
            monkeypatch.setenv(name, value)
        started = time.monotonic()
        with pytest.raises(StorageError) as failed:
            storage.get_json("held-0", "obj-0")
        waited = time.monotonic() - started
        monkeypatch.setenv("TRANSFERFLOW_BUCKET", "held-0")
        with pytest.raises(RuntimeError, match="the object store does not serve reads: .* answered "
                                               "InternalError to every attempt to read s3://held-0/obj-0"):
            stack.check_storage()  # `make stack-up` stops here rather than start workers that fail
    finally:
        s3server.stop_process(server.process)
    assert 4 <= waited < 15
    assert str(failed.value) == (
        f"object storage at {server.endpoint} answered InternalError to every attempt to read "
        "s3://held-0/obj-0 for 4 s: a store that has just started may still be loading its volumes. "
        "Retry in a minute, or check its log (.local/s3/weed.log for `make storage-up`'s store).")
