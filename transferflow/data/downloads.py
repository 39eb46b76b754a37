"""HTTP(S) downloads that resume, retry, show progress and verify checksums,
and archive extraction that refuses to write outside its target."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from transferflow import localcache
from transferflow.errors import (
    ChecksumError,
    DatasetError,
    DownloadError,
    PermanentChecksumError,
    PermanentDownloadError,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 20
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256" or "md5"
    hexdigest: str

    @classmethod
    def from_fragment(cls, url: str) -> tuple[str, Checksum | None]:
        """Split 'https://x/a.tgz#sha256=abc' into the URL and its checksum."""
        base, _, fragment = url.partition("#")
        if not fragment:
            return base, None
        algorithm, sep, digest = fragment.partition("=")
        if not sep or algorithm not in ("sha256", "md5") or not digest:
            raise DatasetError(f"URL fragment #{fragment} is not of the form #sha256=<hex digest>")
        length = {"sha256": 64, "md5": 32}[algorithm]
        if not re.fullmatch(f"[0-9a-fA-F]{{{length}}}", digest):
            raise DatasetError(f"URL fragment #{fragment}: a {algorithm} digest is {length} hex digits; "
                               "copy it again from where the dataset is published")
        return base, cls(algorithm, digest.lower())


def download(url: str, target: Path, checksum: Checksum | None = None, *,
             attempts: int = 4, logger: logging.Logger | logging.LoggerAdapter = log) -> Path:
    """Download `url` to `target`, resuming a partial file, and verify it.

    Transient faults (timeouts, resets, 5xx, throttling) are retried with backoff; permanent
    ones (unknown host, 404/403) fail at once. A wrong checksum is never accepted: the bad
    file is removed and fetched once more, and the same wrong bytes twice fail as permanent.
    Another process downloading the same target (a shared cache) is waited for, not joined:
    the resumable <target>.part is one process's at a time.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with localcache.locked(target, logger):
        return _download_locked(url, target, checksum, attempts, logger)


def _download_locked(url: str, target: Path, checksum: Checksum | None, attempts: int, logger) -> Path:
    if target.is_file() and (checksum is None or _matches(target, checksum)):
        logger.info("using cached download %s", target.name)
        return target
    partial = target.with_name(target.name + ".part")
    first = _fetch_verified(url, partial, checksum, attempts, logger)
    if first is not None:  # a second download tells bytes damaged in transit from a bad source
        logger.warning("checksum mismatch for %s (got %s): discarded, downloading it once more",
                       redact(url), first)
        second = _fetch_verified(url, partial, checksum, attempts, logger)
        if second is not None:
            raise _mismatch(redact(url), checksum, first, second)
    partial.replace(target)
    partial.with_name(partial.name + ".validator").unlink(missing_ok=True)
    return target


def _fetch_verified(url: str, partial: Path, checksum: Checksum | None, attempts: int, logger) -> str | None:
    """Fetch into `partial`; None if its bytes match `checksum`, else their digest (and they are deleted)."""
    _fetch_retrying(url, partial, attempts, logger)
    if checksum is None:
        return None
    actual = _digest(partial, checksum.algorithm)
    if actual == checksum.hexdigest:
        return None
    partial.unlink()
    partial.with_name(partial.name + ".validator").unlink(missing_ok=True)
    return actual


def _mismatch(shown: str, checksum: Checksum, first: str, second: str) -> ChecksumError:
    expected = f"checksum mismatch for {shown}: expected {checksum.algorithm} {checksum.hexdigest}"
    if first == second:
        return PermanentChecksumError(
            f"{expected}, got {second} on two downloads: permanent, not retried (the source serves "
            "these bytes). The file was discarded; if the source changed on purpose, update the checksum.")
    return ChecksumError(
        f"{expected}, got {first} then {second}: the bytes differ on each download, so they are damaged "
        "in transit (transient, retried later). The file was discarded; check the network or proxy.")


TRANSIENT_HTTP = frozenset({408, 425, 429})  # 4xx answers that mean "try again later"
PERMANENT_DNS = frozenset(code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
                          if code is not None)  # not EAI_AGAIN: "temporary failure in name resolution"


def _fetch_retrying(url: str, partial: Path, attempts: int, logger) -> None:
    """_fetch until it succeeds: transient faults retried with backoff, permanent ones raised at once."""
    shown = redact(url)
    for attempt in range(1, attempts + 1):
        try:
            _fetch(url, partial, logger)
            return
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            error = exc
            if isinstance(exc, urllib.error.HTTPError) and exc.code == 416:  # stale partial file
                partial.unlink(missing_ok=True)
                continue
            if (permanent := permanent_fault(url, exc)) is not None:
                cause, fix = permanent
                raise PermanentDownloadError(f"download of {shown} failed: {cause}: permanent, not "
                                             f"retried. {fix}") from None
            if attempt < attempts:
                delay = min(2 ** attempt, 30)
                logger.warning("download attempt %d/%d of %s failed (%s, transient); retrying in %ds",
                               attempt, attempts, shown, exc, delay)
                time.sleep(delay)
    raise DownloadError(f"download of {shown} failed after {attempts} attempts: {error} (transient, "
                        "retried). Check the URL and network; without internet, pass --dataset "
                        "with a local folder or an s3:// copy.") from None


def permanent_fault(url: str, exc: Exception) -> tuple[str, str] | None:
    """(what went wrong, the fix) when retrying `exc` cannot help; None for a fault that may pass."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code >= 500 or exc.code in TRANSIENT_HTTP:
            return None
        return f"HTTP {exc.code} {exc.reason}", "Check the URL (and that it needs no login)."
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, socket.gaierror) and cause.errno in PERMANENT_DNS:
        return (f"cannot resolve host {urllib.parse.urlsplit(url).hostname}",
                "Check the host name in the URL; without internet, pass --dataset with a local "
                "folder or an s3:// copy.")
    return None


def probe(url: str, timeout: float = 10.0) -> dict | None:
    """What the origin says about `url` now (ETag, Last-Modified, size), or None if unreachable."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "transferflow"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = response.headers
            return {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"),
                    "size": int(headers["Content-Length"]) if headers.get("Content-Length") else None}
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError):
        return None


def redact(url: str) -> str:
    """The URL without its query string, which may carry a token (presigned URLs)."""
    return url.split("?", 1)[0] + ("?…" if "?" in url else "")


def _fetch(url: str, partial: Path, logger) -> None:
    """One attempt: continue from the partial file's size with a Range request.

    If-Range makes the server send the whole file again if it changed since the
    partial bytes were fetched, so two versions are never spliced together.
    """
    validator_file = partial.with_name(partial.name + ".validator")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "transferflow"})
    if offset and validator_file.is_file():
        request.add_header("Range", f"bytes={offset}-")
        request.add_header("If-Range", validator_file.read_text())
    else:
        offset = 0
    with urllib.request.urlopen(request, timeout=60) as response:
        if offset and response.status != 206:  # server ignored Range or the file changed
            offset = 0
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        if validator:
            validator_file.write_text(validator)
        total = _total_size(response, offset)
        mode = "ab" if offset else "wb"
        with open(partial, mode) as out:
            _copy_with_progress(response, out, url, offset, total, logger)
        if total is not None and partial.stat().st_size < total:
            raise OSError(f"connection closed at {partial.stat().st_size} of {total} bytes")


def _total_size(response, offset: int) -> int | None:
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None else None


def _copy_with_progress(response, out, url: str, done: int, total: int | None, logger) -> None:
    started = last = time.monotonic()
    start_bytes = done
    for chunk in iter(lambda: response.read(CHUNK), b""):
        out.write(chunk)
        done += len(chunk)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            rate = (done - start_bytes) / max(now - started, 1e-6) / 1e6
            share = f" ({100 * done / total:.0f}% of {total / 1e6:.1f} MB)" if total else ""
            logger.info("downloading %s: %.1f MB%s at %.1f MB/s", redact(url), done / 1e6, share, rate)
            last = now


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, checksum: Checksum) -> bool:
    return _digest(path, checksum.algorithm) == checksum.hexdigest


MAX_BYTES_VAR, MAX_FILES_VAR = "TRANSFERFLOW_MAX_EXTRACT_BYTES", "TRANSFERFLOW_MAX_EXTRACT_FILES"


def extraction_limits() -> tuple[int, int]:
    """Total bytes and members an archive may unpack to (zip-bomb guard), from the environment."""
    try:
        return int(os.environ.get(MAX_BYTES_VAR, 50 << 30)), int(os.environ.get(MAX_FILES_VAR, 5_000_000))
    except ValueError:
        raise DatasetError(f"{MAX_BYTES_VAR} and {MAX_FILES_VAR} must be whole numbers") from None


def extract(archive: Path, target: Path, max_bytes: int | None = None, max_files: int | None = None) -> Path:
    """Unpack a .tar(.gz)/.tgz/.zip into `target`, refusing unsafe members (absolute or `..`
    paths, links, devices) and stopping at the size and member-count limits."""
    default_bytes, default_files = extraction_limits()
    max_bytes = default_bytes if max_bytes is None else max_bytes
    max_files = default_files if max_files is None else max_files
    if target.exists():
        shutil.rmtree(target)
    staging = target.with_name(target.name + ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, staging, max_bytes, max_files)
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            _extract_tar(archive, staging, max_bytes, max_files)
        else:
            raise DatasetError(f"{archive.name}: unsupported archive type; use .tar.gz, .tgz, .tar or .zip")
        staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_member(name: str, archive: Path) -> None:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"archive {archive.name} has an unsafe member path {name!r}; refusing it")


def _check_count(archive: Path, members: int, max_files: int) -> None:
    if members > max_files:
        raise DatasetError(f"archive {archive.name} has {members} members, more than the "
                           f"limit of {max_files}; raise {MAX_FILES_VAR} if it is genuine")


def _check_size(archive: Path, unpacked: int, max_bytes: int) -> None:
    if unpacked > max_bytes:
        raise DatasetError(f"archive {archive.name} unpacks to more than {max_bytes} bytes "
                           f"(a zip bomb?); raise {MAX_BYTES_VAR} if it is genuine")


def _extract_tar(archive: Path, staging: Path, max_bytes: int, max_files: int) -> None:
    total = 0
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _check_count(archive, len(members), max_files)
            for member in members:
                _check_member(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DatasetError(f"archive {archive.name} member {member.name!r} is a link or "
                                       "device file; refusing it")
                total += member.size
                _check_size(archive, total, max_bytes)
            tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"archive {archive.name} is corrupt or truncated: {exc}") from None


def _extract_zip(archive: Path, staging: Path, max_bytes: int, max_files: int) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_count(archive, len(infos), max_files)
            _check_size(archive, sum(info.file_size for info in infos), max_bytes)
            for info in infos:
                _check_member(info.filename, archive)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DatasetError(f"archive {archive.name} member {info.filename!r} is a "
                                       "symlink; refusing it")
            zf.extractall(staging)
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
        raise DatasetError(f"archive {archive.name} is corrupt or truncated: {exc}") from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted members, unknown compression
        raise DatasetError(f"archive {archive.name} cannot be unpacked: {exc}") from None
