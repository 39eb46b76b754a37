"""The local cache of object-storage files (TRANSFERFLOW_CACHE_DIR): each copy is stamped with
the ETag it was downloaded at and reused while the object is unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from transferflow import storage
from transferflow.errors import StorageError


def cache_dir() -> Path:
    """Local cache for downloads and prepared data (TRANSFERFLOW_CACHE_DIR)."""
    root = os.environ.get("TRANSFERFLOW_CACHE_DIR") or Path.home() / ".cache" / "transferflow"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_download(uri: str) -> Path:
    """Download an s3:// object into the cache, reusing the copy while its ETag is unchanged."""
    location = storage.parse_s3_object_uri(uri)
    info = storage.head(location.bucket, location.key)
    if info is None:
        raise StorageError(f"{uri} does not exist at {storage.endpoint_label()}: check the URI")
    target = cache_dir() / "s3" / location.bucket / location.key
    return download_if_changed(location.bucket, location.key, target, info["ETag"].strip('"'))


def keep_uploaded(path: Path, bucket: str, key: str) -> Path:
    """Move a file this process just uploaded into the cache, stamped with the object's ETag, so that
    a later stage of the run that reads the object (the next phase's model) does not download it."""
    import shutil

    info = storage.head(bucket, key)
    target = cache_dir() / "s3" / bucket / key
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    target.with_name(target.name + ".etag").write_text(info["ETag"].strip('"'))
    return target


def download_if_changed(bucket: str, key: str, target: Path, etag: str) -> Path:
    """Download unless `target` is the copy stamped with this ETag (in <target>.etag) already."""
    stamp = target.with_name(target.name + ".etag")
    if not (target.is_file() and stamp.is_file() and stamp.read_text() == etag):
        storage.download_file(bucket, key, target)
        stamp.write_text(etag)
    return target
