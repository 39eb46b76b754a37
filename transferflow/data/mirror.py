"""The object-storage mirror of remote dataset sources (built-ins and http(s) archives).

The first run that downloads a source copies the downloaded files to
`datasets/<name>/<fingerprint>/source/` and then writes an index entry,
`datasets/_sources/<source id>.json`, that maps the source to them. Later runs, and
workers without internet, find the entry and read the files from object storage
instead of the origin. A pinned source (built-in, or a URL with #sha256=) is
identified by its checksum, so the mirror is always right for it; an unpinned URL
is checked against the origin (ETag, Last-Modified, size) when the origin answers,
and used as is, with a warning, when it does not.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from transferflow import localcache, storage
from transferflow.data import downloads
from transferflow.errors import DatasetError

log = logging.getLogger(__name__)

INDEX_PREFIX = "datasets/_sources"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote source, and the checksum it must have (if known)."""

    url: str
    checksum: downloads.Checksum | None = None

    @property
    def filename(self) -> str:
        return self.url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class RemoteSource:
    """A source that lives outside object storage: what to download and how to name it."""

    identity: str  # stable text naming the content: URL (+ checksum), or builtin:<name>:<checksums>
    shown: str  # for logs and metadata: no query-string tokens
    files: tuple[RemoteFile, ...]

    @property
    def pinned(self) -> bool:
        return all(f.checksum is not None for f in self.files)

    @property
    def source_id(self) -> str:
        return hashlib.sha256(self.identity.encode()).hexdigest()[:32]

    def index_key(self) -> str:
        return f"{INDEX_PREFIX}/{self.source_id}.json"


def lookup(bucket: str, source: RemoteSource, logger=log) -> dict | None:
    """The mirror entry to use for `source`, or None when the origin must be read."""
    found = storage.get_json(bucket, source.index_key())
    if found is None:
        return None
    entry = found[0]
    if source.pinned:
        logger.info("using the mirror of %s in s3://%s (made %s)", source.shown, bucket, entry["mirrored_at"])
        return entry
    return _check_origin(source, entry, bucket, logger)


def _check_origin(source: RemoteSource, entry: dict, bucket: str, logger) -> dict | None:
    now = [downloads.probe(f.url) for f in source.files]
    if any(state is None for state in now):
        logger.warning("origin of %s does not answer: using its mirror in s3://%s, made %s",
                       source.shown, bucket, entry["mirrored_at"])
        return entry
    recorded = [f["origin"] for f in entry["files"]]
    if all(_same(a, b) for a, b in zip(now, recorded, strict=True)):
        logger.info("origin of %s is unchanged since %s: using its mirror in s3://%s", source.shown,
                    entry["mirrored_at"], bucket)
        return entry
    logger.info("origin of %s changed since it was mirrored (%s): downloading it again", source.shown,
                entry["mirrored_at"])
    return None


def _same(now: dict, recorded: dict | None) -> bool:
    if not recorded:
        return False
    if now.get("etag") and recorded.get("etag"):
        return now["etag"] == recorded["etag"]
    fields = ("size", "last_modified")
    return [now.get(f) for f in fields] == [recorded.get(f) for f in fields]


def fetch(bucket: str, entry: dict, logger=log) -> list[Path]:
    """The mirrored files, downloaded into the local cache and checked against their sha256."""
    paths = []
    for item in entry["files"]:
        path = localcache.cached_download(item["uri"])
        if storage.sha256_file(path) != item["sha256"]:
            path.unlink()
            raise DatasetError(f"mirrored file {item['uri']} does not match its recorded sha256: the "
                               f"mirror is damaged. Delete s3://{bucket}/{INDEX_PREFIX}/… for this source "
                               "(transferflow datasets list) and re-run where the origin is reachable.")
        paths.append(path)
    logger.info("read %d mirrored files (%.1f MB) from object storage", len(paths),
                sum(p.stat().st_size for p in paths) / 1e6)
    return paths


def download(source: RemoteSource, logger=log) -> tuple[list[Path], list[dict | None]]:
    """Download every file of `source` from its origin (resuming, retrying, verifying).

    Also returns what the origin said about each file (ETag, size) just before the download,
    for unpinned sources: recorded with the mirror, it can only be older than the bytes, so a
    change during the download makes the next run fetch again rather than trust stale bytes.
    """
    folder = localcache.cache_dir() / "downloads" / source.source_id[:16]
    origins = [None if source.pinned else downloads.probe(f.url) for f in source.files]
    paths = [downloads.download(f.url, folder / f.filename, f.checksum, logger=logger) for f in source.files]
    return paths, origins


def publish(bucket: str, source: RemoteSource, name: str, fingerprint: str, paths: list[Path],
            origins: list[dict | None], logger=log) -> str:
    """Copy the downloaded files to the mirror, then write the index entry (last, so an entry
    always points at complete files). Returns the mirror's prefix."""
    prefix = f"datasets/{name}/{fingerprint[:16]}/source"
    files = []
    for remote, path, origin in zip(source.files, paths, origins, strict=True):
        key = f"{prefix}/{remote.filename}"
        storage.upload_file(path, bucket, key)
        files.append({"uri": f"s3://{bucket}/{key}", "url": downloads.redact(remote.url),
                      "sha256": storage.sha256_file(path), "size": path.stat().st_size, "origin": origin})
    entry = {"source": source.shown, "fingerprint": fingerprint, "name": name, "files": files,
             "mirrored_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    storage.put_json(bucket, source.index_key(), entry)
    logger.info("mirrored %s to s3://%s/%s/ for workers without internet", source.shown, bucket, prefix)
    return f"s3://{bucket}/{prefix}/"


def entries(bucket: str) -> list[dict]:
    """Every mirrored source in the bucket."""
    found = []
    for obj in storage.list_keys(bucket, INDEX_PREFIX + "/"):
        document = storage.get_json(bucket, obj["Key"])
        if document is not None:
            found.append({**document[0], "index": f"s3://{bucket}/{obj['Key']}"})
    return found
