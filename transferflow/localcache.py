"""The local cache of object-storage files (TRANSFERFLOW_CACHE_DIR): each copy is stamped with
the ETag it was downloaded at and reused while the object is unchanged.

Several processes may share one cache (two workers, a Ray node and a worker, two `transferflow
train` runs): whatever writes into it (a download, its .part, an extraction, a sync) holds a
cross-process lock on its target (`locked`), so one process writes while the others wait and
then find the finished copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from transferflow import storage
from transferflow.errors import StorageError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Local cache for downloads and prepared data (TRANSFERFLOW_CACHE_DIR)."""
    root = os.environ.get("TRANSFERFLOW_CACHE_DIR") or Path.home() / ".cache" / "transferflow"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(target: Path, logger=log) -> Iterator[None]:
    """Hold the cross-process lock on `target` (a file or folder in the cache). The lock files live
    apart, under <cache>/locks/, so that no folder scan or stale-file sweep ever sees or removes
    one; they are empty and kept (deleting a lock file another process waits on would split it)."""
    from filelock import FileLock, Timeout

    name = hashlib.sha256(str(Path(target).absolute()).encode()).hexdigest()[:32]
    folder = cache_dir() / "locks"
    folder.mkdir(exist_ok=True)
    lock = FileLock(str(folder / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("waiting for another process writing %s", target)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def cache_path(bucket: str, key: str) -> Path:
    """Where the cache keeps s3://bucket/key; a key that would land outside it (..) is refused."""
    parts = Path(key).parts
    if not key or Path(key).is_absolute() or ".." in parts or "/" in bucket or bucket in ("", ".", ".."):
        raise StorageError(f"s3://{bucket}/{key} cannot be cached: its name would be written outside the "
                           f"cache folder (.. or an absolute path); rename the object")
    return cache_dir() / "s3" / bucket / Path(*parts)


def cached_download(uri: str) -> Path:
    """Download an s3:// object into the cache, reusing the copy while its ETag is unchanged."""
    location = storage.parse_s3_object_uri(uri)
    target = cache_path(location.bucket, location.key)
    info = storage.head(location.bucket, location.key)
    if info is None:
        raise StorageError(f"{uri} does not exist at {storage.endpoint_label()}: check the URI")
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
    """Download unless `target` is the copy stamped with this ETag (in <target>.etag) already;
    under the target's lock, so the copy and its stamp always belong together."""
    stamp = target.with_name(target.name + ".etag")
    with locked(target):
        if not (target.is_file() and stamp.is_file() and stamp.read_text() == etag):
            storage.download_file(bucket, key, target)
            stamp.write_text(etag)
    return target
