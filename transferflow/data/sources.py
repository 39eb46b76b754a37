"""Locating a dataset's files: a local folder or archive, an s3:// prefix or archive, or a
remote source (built-in name, http(s) archive) to download or read from its mirror."""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from transferflow import localcache, storage
from transferflow.data import downloads
from transferflow.data.builtins import BUILTINS
from transferflow.data.layout import ARCHIVE_SUFFIXES
from transferflow.data.mirror import RemoteFile, RemoteSource
from transferflow.errors import DatasetError

log = logging.getLogger(__name__)


def remote_source(dataset: str) -> RemoteSource | None:
    """Built-ins and http(s) archives: sources read from outside object storage (and mirrored)."""
    if dataset in BUILTINS:
        files = BUILTINS[dataset].files
        return RemoteSource(identity=f"builtin:{dataset}:" + ",".join(f.sha256 for f in files), shown=dataset,
                            files=tuple(RemoteFile(f.url, downloads.Checksum("sha256", f.sha256))
                                        for f in files))
    if dataset.startswith(("http://", "https://")):
        base, checksum = downloads.Checksum.from_fragment(dataset)
        if not base.split("?", 1)[0].lower().endswith(ARCHIVE_SUFFIXES):
            raise DatasetError(f"{downloads.redact(base)} is not an archive URL (.tar.gz, .tgz, .tar, .zip)")
        pin = f"#{checksum.algorithm}={checksum.hexdigest}" if checksum else ""
        return RemoteSource(identity=downloads.redact(base) + pin, shown=downloads.redact(dataset),
                            files=(RemoteFile(base, checksum),))
    return None


def source_signature(dataset: str) -> str | None:
    """A cheap text that changes whenever the source's content may have: checksums for pinned
    sources, object keys, ETags and sizes for s3://, file sizes and times for local paths. None when only a
    download can tell (an http(s) URL without #sha256=)."""
    remote = remote_source(dataset)
    if remote is not None:
        return remote.identity if remote.pinned else None
    digest = hashlib.sha256()
    if dataset.startswith("s3://"):
        location = storage.parse_s3_uri(dataset)
        for obj in storage.list_keys(location.bucket, location.key):
            digest.update(f"{obj['Key']}\0{obj['ETag']}\0{obj['Size']}\n".encode())
        return f"{dataset}#{digest.hexdigest()}"
    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.exists():
        return None
    for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if item.is_file():
            stat = item.stat()
            digest.update(f"{item.relative_to(path) if path.is_dir() else ''}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return f"{path.resolve()}#{digest.hexdigest()}"


def local_folder(dataset: str, logger=log) -> Path:
    """The local folder holding an s3:// or local dataset's images (synced or extracted)."""
    if dataset.startswith("s3://"):
        return _fetch_s3(dataset, logger)
    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.exists():
        known = ", ".join(sorted(BUILTINS))
        raise DatasetError(
            f"dataset {dataset!r} does not exist: pass a folder with one subfolder per class, "
            f"an archive, s3://bucket/prefix/, an http(s) URL, or a built-in ({known})")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DatasetError(f"dataset {dataset!r} is a file but not an archive "
                               "(.tar.gz, .tgz, .tar, .zip)")
        return extract_cached(path, hashlib.sha256(str(path.resolve()).encode()).hexdigest())
    return path


def extract_cached(archive: Path, key: str, discard_on_failure: bool = False) -> Path:
    """Unpack once per archive content. A downloaded archive that fails to unpack is
    deleted, so the next run downloads it again instead of failing on the same bytes."""
    target = localcache.cache_dir() / "extracted" / key
    stamp = target / ".source-sha256"
    with localcache.locked(target):  # another process may be unpacking it (its .extracting folder)
        digest = storage.sha256_file(archive)
        if not (stamp.is_file() and stamp.read_text() == digest):
            try:
                downloads.extract(archive, target)
            except DatasetError:
                if discard_on_failure:
                    archive.unlink(missing_ok=True)
                raise
            stamp.write_text(digest)
    return target


def _fetch_s3(uri: str, logger) -> Path:
    location = storage.parse_s3_uri(uri)
    if location.key.lower().endswith(ARCHIVE_SUFFIXES):
        archive = localcache.cached_download(uri)
        return extract_cached(archive, hashlib.sha256(uri.encode()).hexdigest()[:16],
                               discard_on_failure=True)
    prefix = location.key.rstrip("/") + "/" if location.key else ""
    objects = [o for o in storage.list_keys(location.bucket, prefix) if not o["Key"].endswith("/")]
    if not objects:
        raise DatasetError(f"dataset {uri} has no objects at {storage.endpoint_label()}: "
                           "check the bucket and prefix")
    target = localcache.cache_dir() / "s3" / location.bucket
    if prefix:
        target = localcache.cache_path(location.bucket, prefix)  # .. in the prefix is refused
    logger.info("syncing %d objects from %s", len(objects), uri)
    wanted = {safe_join(target, o["Key"][len(prefix):], uri): o for o in objects}

    def fetch(item: tuple[Path, dict]) -> None:
        local, obj = item
        localcache.download_if_changed(location.bucket, obj["Key"], local, obj["ETag"])

    with localcache.locked(target, logger):  # the sweep must not remove what another run syncs
        _remove_stale(target, set(wanted))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fetch, wanted.items()))
    return target


def safe_join(root: Path, relative: str, source: str) -> Path:
    """root/relative, refusing names that would land outside root (.., absolute paths)."""
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise DatasetError(f"{source} holds an object named {relative!r} that would be written "
                           "outside the dataset folder; rename or remove it")
    return root.joinpath(*parts)


def _remove_stale(target: Path, wanted: set[Path]) -> None:
    """Delete local copies of objects that are gone from the bucket, so they are not trained on."""
    if not target.is_dir():
        return
    for path in target.rglob("*"):
        if path.is_file():
            original = path.with_name(path.name.removesuffix(".etag"))
            if original not in wanted:
                path.unlink()
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
