"""Object storage against the real SeaweedFS server."""

import socket

import pytest

from transferflow import storage
from transferflow.errors import StorageError


def test_bucket_is_created_when_missing(s3_server, monkeypatch):
    monkeypatch.setenv("TRANSFERFLOW_BUCKET", "created-by-test")
    assert storage.ensure_bucket() == "created-by-test"
    assert storage.ensure_bucket() == "created-by-test"  # idempotent
    storage.put_json("created-by-test", "k.json", {"a": 1})
    assert storage.get_json("created-by-test", "k.json")[0] == {"a": 1}


def test_conditional_writes_refuse_the_loser(bucket):
    from transferflow.storage import PreconditionFailed

    etag = storage.put_json(bucket, "alias.json", {"v": 1}, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        storage.put_json(bucket, "alias.json", {"v": 2}, if_none_match=True)
    storage.put_json(bucket, "alias.json", {"v": 3}, if_match=etag)
    with pytest.raises(PreconditionFailed):
        storage.put_json(bucket, "alias.json", {"v": 4}, if_match=etag)
    assert storage.get_json(bucket, "alias.json")[0] == {"v": 3}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint_names_the_endpoint(s3_server, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError) as info:
        storage.ensure_bucket("anything")
    assert endpoint in str(info.value)
    assert "make storage-up" in str(info.value)


def test_wrong_credentials_are_reported_without_the_secret(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(StorageError) as info:
        storage.ensure_bucket("transferflow")
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value)
    assert "wrong-secret-value" not in str(info.value)
    assert s3_server.secret_key not in str(info.value)


def test_server_requires_credentials(s3_server):
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import ClientError

    anonymous = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                             config=Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError, match=r"\(AccessDenied\) when calling the ListBuckets operation") as info:
        anonymous.list_buckets()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403  # refused, not unreachable
