"""Object storage through boto3: S3 URIs, JSON documents, conditional writes.

Endpoint and credentials come from the standard AWS variables
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE...).
Error messages name the endpoint and bucket, never the credentials.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config

from transferflow.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_BUCKET = "transferflow"
LOCAL_ENV_FILE = Path(".local/s3.env")
LOCAL_STORE_LOG = Path(".local/s3/weed.log")  # where `make storage-up`'s store logs
WARMUP_S = 30.0  # how long a store answering 500/503 is given to finish starting (TRANSFERFLOW_S3_WARMUP_S)
STARTING_CODES = ("InternalError", "ServiceUnavailable", "SlowDown")
_S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


class PreconditionFailed(StorageError):
    """A conditional write (IfMatch / IfNoneMatch) lost against another writer."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> S3Location:
    """Split 's3://bucket/key' into its parts."""
    if not uri.startswith("s3://"):
        raise StorageError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise StorageError(f"{uri!r} has no valid bucket name (3-63 lowercase letters, digits, '.', '-')")
    return S3Location(bucket, key)


def parse_s3_object_uri(uri: str) -> S3Location:
    """Like parse_s3_uri, for URIs that must name an object (not just a bucket)."""
    location = parse_s3_uri(uri)
    if not location.key or location.key.endswith("/"):
        raise StorageError(f"{uri!r} names no object: use s3://bucket/path/to/file")
    return location


def load_local_env(path: Path = LOCAL_ENV_FILE) -> bool:
    """Use the local store started by `make storage-up` when no S3 settings are given.

    Applies only when none of AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE is set,
    so a configured cloud account is never overridden.
    """
    if any(os.environ.get(name) for name in _S3_SETTINGS) or not path.is_file():
        return False
    for line in path.read_text().splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and not name.startswith("#"):
            os.environ[name.strip()] = value.strip()
    log.info("using the local object store configured in %s", path)
    return True


def configured() -> bool:
    """Whether the environment names an object store (endpoint, keys or profile)."""
    return any(os.environ.get(name) for name in _S3_SETTINGS)


def bucket_name() -> str:
    return os.environ.get("TRANSFERFLOW_BUCKET") or DEFAULT_BUCKET


def endpoint_label() -> str:
    """Where requests go, for error messages (no credentials)."""
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "the default AWS S3 endpoint"
    )


def client():
    """A boto3 S3 client for the current environment, cached per endpoint and key id."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    cache_key = (endpoint_label(), os.environ.get("AWS_ACCESS_KEY_ID"), region,
                 os.environ.get("AWS_PROFILE"), hashlib.sha256(secret.encode()).hexdigest())
    with _clients_lock:
        if cache_key not in _clients:
            config = Config(
                region_name=region,
                retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard"),
                         "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "4"))},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
                s3={"addressing_style": "path"},
                signature_version="s3v4",  # presigned URLs: SigV4, bounded to 7 days
            )
            s3 = boto3.session.Session().client("s3", config=config)
            # Registered after botocore's own retry handler, so it is asked once that one gives up.
            s3.meta.events.register("needs-retry.s3", _retry_starting_store)
            _clients[cache_key] = s3
        return _clients[cache_key]


def warmup_seconds() -> float:
    return float(os.environ.get("TRANSFERFLOW_S3_WARMUP_S", WARMUP_S))


def _retry_starting_store(response=None, request_dict=None, attempts: int = 1, **_) -> float | None:
    """Seconds to wait before retrying a 500 or 503, while the first one is under warmup_seconds()
    old; else None (no retry). A store that has just started answers InternalError until it has
    loaded its volumes, for longer than botocore's own retries (under a second) wait."""
    if response is None or response[0].status_code not in (500, 503):
        return None
    since = request_dict["context"].setdefault("transferflow_5xx_since", time.monotonic())
    left = since + warmup_seconds() - time.monotonic()
    return min(0.25 * 2 ** min(attempts, 4), left) if left > 0 else None


@contextlib.contextmanager
def translated(action: str, bucket: str, key: str = "") -> Iterator[None]:
    """Turn botocore failures into StorageError messages that say what to check."""
    where = f"s3://{bucket}/{key}" if key else f"bucket {bucket!r}"
    try:
        yield
    except (botocore.exceptions.EndpointConnectionError,
            botocore.exceptions.ConnectTimeoutError,
            botocore.exceptions.ReadTimeoutError,
            botocore.exceptions.ConnectionClosedError) as exc:
        raise StorageError(
            f"cannot reach object storage at {endpoint_label()} while trying to {action} "
            f"{where}: {type(exc).__name__}. Check AWS_ENDPOINT_URL, or start the local "
            "store with `make storage-up`."
        ) from None
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        raise StorageError(
            f"no complete S3 credentials found to {action} {where}: set both AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run `make storage-up` for the local store."
        ) from None
    except S3UploadFailedError as exc:
        raise StorageError(f"could not {action} {where} at {endpoint_label()}: "
                           f"{_without_secrets(str(exc))}") from None
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        # 412: the condition failed; 409: AWS's answer to two conditional writes at once.
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            raise PreconditionFailed(f"conditional write to {where} lost to another writer") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            raise StorageError(
                f"object storage at {endpoint_label()} refused to {action} {where} ({code}): "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy."
            ) from None
        if code in ("NoSuchBucket",):
            raise StorageError(
                f"bucket {bucket!r} does not exist at {endpoint_label()}: create it or fix the URI"
            ) from None
        if code in STARTING_CODES or status in (500, 503):
            raise StorageError(
                f"object storage at {endpoint_label()} answered {code or status} to every attempt to "
                f"{action} {where} for {warmup_seconds():.0f} s: a store that has just started may "
                f"still be loading its volumes. Retry in a minute, or check its log ({LOCAL_STORE_LOG} "
                "for `make storage-up`'s store)."
            ) from None
        raise StorageError(f"could not {action} {where} at {endpoint_label()}: {code or status}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise StorageError(f"could not {action} {where} at {endpoint_label()}: "
                           f"{type(exc).__name__}: {_without_secrets(str(exc))}") from None


def _without_secrets(text: str) -> str:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return text.replace(secret, "***") if secret else text


def ensure_bucket(bucket: str | None = None) -> str:
    """Create the bucket if it is missing; fail clearly if storage is unreachable."""
    bucket = bucket or bucket_name()
    if bucket_exists(bucket):
        return bucket
    with translated("create", bucket):
        try:
            client().create_bucket(Bucket=bucket)
            log.info("created bucket %s at %s", bucket, endpoint_label())
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
    return bucket


def bucket_exists(bucket: str) -> bool:
    with translated("check", bucket):
        try:
            client().head_bucket(Bucket=bucket)
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
    return False


def check_readable(bucket: str) -> None:
    """Read a byte of one object in the bucket, if it exists and holds any. A listing comes from
    the store's metadata alone; a read needs the volumes, which a store that has just started
    may still be loading."""
    first = next(iter(list_keys(bucket, "")), None) if bucket_exists(bucket) else None
    if first is not None:
        extra = {"Range": "bytes=0-0"} if first["Size"] else {}
        with translated("read", bucket, first["Key"]):
            client().get_object(Bucket=bucket, Key=first["Key"], **extra)["Body"].read()


def head(bucket: str, key: str) -> dict | None:
    with translated("inspect", bucket, key):
        try:
            return client().head_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise


def put_json(bucket: str, key: str, document: Any, *, if_none_match: bool = False,
             if_match: str | None = None) -> str:
    """Write a JSON document, optionally only if absent or unchanged; returns the ETag."""
    body = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
    extra: dict[str, str] = {}
    if if_none_match:
        extra["IfNoneMatch"] = "*"
    if if_match:
        extra["IfMatch"] = if_match
    with translated("write", bucket, key):
        response = client().put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)
    return response["ETag"]


STORE_ID_KEY = "_transferflow/store.json"


def store_id(bucket: str) -> str:
    """A random id written into the bucket the first time it is asked for: it changes when the
    store or bucket is wiped, so caches kept outside the store (Prefect's) can tell."""
    if get_json(bucket, STORE_ID_KEY) is None:
        with contextlib.suppress(PreconditionFailed):  # another process wrote it first: use theirs
            put_json(bucket, STORE_ID_KEY, {"id": uuid.uuid4().hex}, if_none_match=True)
    return get_json(bucket, STORE_ID_KEY)[0]["id"]


def get_json(bucket: str, key: str) -> tuple[Any, str] | None:
    """Read a JSON document and its ETag, or None when it does not exist."""
    with translated("read", bucket, key):
        try:
            response = client().get_object(Bucket=bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(response["Body"].read()), response["ETag"]


def list_keys(bucket: str, prefix: str) -> Iterator[dict]:
    """Every object under a prefix, as boto3's listing entries (Key, Size, ETag...)."""
    with translated("list", bucket, prefix):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])


def list_children(bucket: str, prefix: str) -> list[str]:
    """The names of the 'folders' directly under a prefix."""
    names = []
    with translated("list", bucket, prefix):
        pages = client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for entry in page.get("CommonPrefixes", []):
                names.append(entry["Prefix"][len(prefix):].rstrip("/"))
    return sorted(names)


def upload_file(path: Path, bucket: str, key: str) -> None:
    """Upload a file (multipart when large; boto3 aborts failed multipart uploads)."""
    with translated("upload", bucket, key):
        client().upload_file(str(path), bucket, key)


def download_file(bucket: str, key: str, path: Path) -> Path:
    """Download to `path` through a temporary name, so a partial file is never left. The name is this
    download's own: processes sharing a cache (Ray workers on a node) may fetch one object at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.part")
    with translated("download", bucket, key):
        client().download_file(bucket, key, str(partial))
    partial.replace(path)
    return path


def copy_object(source: S3Location, bucket: str, key: str) -> None:
    """Server-side copy (managed: multipart for large objects)."""
    with translated("copy", bucket, key):
        client().copy({"Bucket": source.bucket, "Key": source.key}, bucket, key)


def object_sha256(bucket: str, key: str) -> tuple[str, int]:
    """Stream an object back and hash it: the check that what is stored is what was meant."""
    digest = hashlib.sha256()
    size = 0
    with translated("verify", bucket, key):
        body = client().get_object(Bucket=bucket, Key=key)["Body"]
        with contextlib.closing(body):
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def delete_prefix(bucket: str, prefix: str) -> int:
    keys = [entry["Key"] for entry in list_keys(bucket, prefix)]
    with translated("delete", bucket, prefix):
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            client().delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


def abort_stale_uploads(bucket: str, older_than_s: float = 3600.0, page_size: int = 1000) -> int:
    """Abort multipart uploads started more than `older_than_s` ago and never completed.

    boto3 aborts a failed multipart upload itself, but not when the store was down at that
    moment (or the process was killed): their parts would stay, unseen and billed.
    """
    cutoff = time.time() - older_than_s
    aborted = 0
    with translated("list uploads in", bucket):
        pages = client().get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, PaginationConfig={"PageSize": page_size})  # S3 lists at most 1000 a page
        for upload in (upload for page in pages for upload in page.get("Uploads", [])):
            if upload["Initiated"].timestamp() <= cutoff:
                client().abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                aborted += 1
    return aborted


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def put_bytes(bucket: str, key: str, body: bytes, content_type: str) -> None:
    with translated("write", bucket, key):
        client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)


def presigned_get(bucket: str, key: str, expires_s: int) -> str:
    """A time-limited GET URL (at most 7 days with SigV4). Never log it."""
    with translated("sign", bucket, key):
        return client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                               ExpiresIn=min(expires_s, 7 * 24 * 3600))


def object_url(bucket: str, key: str) -> str:
    """The object's plain (unsigned) URL on the configured endpoint."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{key}"
    return f"https://{bucket}.s3.amazonaws.com/{key}"
