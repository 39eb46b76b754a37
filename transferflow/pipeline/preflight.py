"""Checks of a RetrainConfig that need neither Prefect nor TensorFlow: the dataset and weights
exist and are well formed. `transferflow train` runs them before either loads, so a wrong path
is refused in a second instead of after Prefect's start-up; the retrain flow runs them as its
first task, so a missing weights file is not found only after a long download.

Messages name the input as the caller knows it: `--dataset` on the command line, `dataset`
in the flow's parameters.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from pathlib import Path

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError, DatasetError, StorageError, WeightsError

SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
DATASET_FORMS = ("a built-in name ({builtins}), an http(s) archive URL, s3://bucket/prefix/, or a local "
                 "folder (one subfolder per class) or archive")
WEIGHTS_FORMS = "imagenet, none, or the local path, file:// or s3:// URI of a .weights.h5 file"
RAY_PORTS = {"ray": 10001, "": 6379}  # Ray Client's port for ray://, else the head's GCS port
RAY_CONNECT_TIMEOUT_S = 5.0


def preflight(config: RetrainConfig, *, as_flags: bool = False) -> None:
    """Refuse what is knowable before the flow starts; `as_flags` names inputs as CLI flags."""
    check_dataset(config.dataset, "--dataset" if as_flags else "dataset")
    if config.extra_data:
        check_dataset(config.extra_data, "--extra-data" if as_flags else "extra_data")
    check_weights(config.weights, "--weights" if as_flags else "weights")
    if config.export:  # the converters and runtimes are an extra: refuse before training, not after
        from transferflow.publishing.exports import check_installed

        check_installed(config.export, "--export" if as_flags else "export")
    if config.engine == "ray":
        check_ray("--engine" if as_flags else "engine")
    if config.init_from:  # the version exists, with this backbone and size: refused before any download
        from transferflow.training.warmstart import resolve_init_from

        resolve_init_from(config)


def check_dataset(dataset: str, label: str = "dataset") -> None:
    """A built-in, a well-formed archive URL, an s3:// prefix holding objects, or an existing path."""
    from transferflow.data.builtins import BUILTINS

    if dataset in BUILTINS:
        _check_origin_resolves(dataset, label)
    elif dataset.startswith(("http://", "https://")):
        _check_archive_url(dataset, label)
        _check_origin_resolves(dataset, label)
    elif dataset.startswith("s3://"):
        _check_s3_prefix(dataset, label)
    elif SCHEME_RE.match(dataset) and not dataset.startswith("file://"):
        raise DatasetError(f"{label} {dataset}: {_scheme(dataset)}:// is not a supported source; pass "
                           + DATASET_FORMS.format(builtins=", ".join(sorted(BUILTINS))))
    else:
        _check_local_dataset(dataset, label)


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0]


def _check_archive_url(url: str, label: str) -> None:
    from transferflow.data import ARCHIVE_SUFFIXES
    from transferflow.data.downloads import Checksum, redact

    try:
        base, _ = Checksum.from_fragment(url)
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except DatasetError as exc:
        raise DatasetError(f"{label}: {exc}") from None
    except ValueError as exc:
        raise DatasetError(f"{label} {redact(url)} is not a valid URL ({exc}): fix it") from None
    if not parts.hostname:
        raise DatasetError(f"{label} {redact(url)} names no host: use https://host/path/name.tar.gz")
    if not parts.path.lower().endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(f"{label} {redact(url)} is not an archive URL (.tar.gz, .tgz, .tar, .zip): "
                           "point it at the archive file itself")


def _check_origin_resolves(dataset: str, label: str) -> None:
    """A remote source that is not mirrored yet needs its origin: refuse a host that does not
    resolve (permanently) now, not after Prefect's start-up and a failed download stage.
    Mirrored sources pass: workers without internet read the mirror."""
    from transferflow.data import remote_source
    from transferflow.data.downloads import PERMANENT_DNS
    from transferflow.errors import PermanentDownloadError

    remote = remote_source(dataset)
    try:
        if storage.get_json(storage.bucket_name(), remote.index_key()) is not None:
            return
    except StorageError:
        return  # no bucket yet, or no store: the storage check reports that
    for file in remote.files:
        host = urllib.parse.urlsplit(file.url).hostname
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as exc:
            if exc.errno in PERMANENT_DNS:
                raise PermanentDownloadError(
                    f"{label} {remote.shown}: cannot resolve host {host}: permanent, not retried. It is "
                    f"not mirrored in s3://{storage.bucket_name()} either: without internet, run "
                    f"`transferflow datasets prefetch {remote.shown}` where there is internet, or pass "
                    "a local folder or an s3:// copy") from None


def _check_s3_prefix(uri: str, label: str) -> None:
    try:
        location = storage.parse_s3_uri(uri)
    except StorageError as exc:
        raise DatasetError(f"{label}: {exc}") from None
    if next(iter(storage.list_keys(location.bucket, location.key)), None) is None:
        raise DatasetError(f"{label} {uri} holds no objects at {storage.endpoint_label()}: check the URI "
                           "(a prefix with one folder per class, or an archive's key)")


def _check_local_dataset(dataset: str, label: str) -> None:
    from transferflow.data import ARCHIVE_SUFFIXES
    from transferflow.data.builtins import BUILTINS

    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.exists():
        raise DatasetError(f"{label} {dataset!r} does not exist: pass "
                           + DATASET_FORMS.format(builtins=", ".join(sorted(BUILTINS))))
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(f"{label} {dataset!r} is a file but not an archive (.tar.gz, .tgz, .tar, .zip): "
                           "pass the folder or archive that holds the images")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise DatasetError(f"{label} {dataset!r} is not readable by this user: fix its permissions "
                           "(chmod -R u+rX)")


def check_weights(weights: str, label: str = "weights") -> None:
    """imagenet, none, an s3:// object that exists, or a local .weights.h5 that HDF5 can open."""
    if weights in ("imagenet", "none"):
        return
    if weights.startswith("s3://"):
        _check_s3_weights(weights, label)
    elif SCHEME_RE.match(weights) and not weights.startswith("file://"):
        raise WeightsError(f"{label} {weights}: {_scheme(weights)}:// is not supported; pass {WEIGHTS_FORMS}")
    else:
        _check_local_weights(weights, label)


def _check_s3_weights(uri: str, label: str) -> None:
    try:
        location = storage.parse_s3_object_uri(uri)
    except StorageError as exc:
        raise WeightsError(f"{label}: {exc}") from None
    if storage.head(location.bucket, location.key) is None:
        raise WeightsError(f"{label} {uri} does not exist at {storage.endpoint_label()}: upload the "
                           ".weights.h5 file there, or fix the URI")


def _check_local_weights(weights: str, label: str) -> None:
    from transferflow.training.backbones import DAMAGED_FIX, damaged_weights

    path = Path(weights.removeprefix("file://")).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise WeightsError(f"{label} {weights} {what}: pass {WEIGHTS_FORMS}")
    if not os.access(path, os.R_OK):
        raise WeightsError(f"{label} {weights} is not readable by this user: fix its permissions")
    damage = damaged_weights(path)
    if damage:
        raise WeightsError(f"{label} {weights} is damaged: {damage}. {DAMAGED_FIX}")


def check_ray(label: str = "engine") -> None:
    """engine ray: Ray is installed, and the cluster at RAY_ADDRESS, when set, answers. Neither
    imports Ray (seconds) nor joins the cluster: a TCP connection to its port is enough to tell."""
    from transferflow.scaleout.cluster import INSTALL_HINT, ray_installed

    if not ray_installed():
        raise ConfigError(f"{label} ray needs Ray, which is not installed here: {INSTALL_HINT}, or pass "
                          f"{label} local")
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address and address not in ("auto", "local"):
        _check_ray_address(address, label)


def _check_ray_address(address: str, label: str) -> None:
    scheme, _, rest = address.rpartition("://")
    netloc = rest.split("/", 1)[0]
    host, colon, port_text = netloc.rpartition(":")
    if not colon:  # no port: Ray's default for the form
        host, port_text = netloc, str(RAY_PORTS.get(scheme, RAY_PORTS[""]))
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"RAY_ADDRESS {address!r} is not host:port or ray://host:port: fix it, or unset "
                          "it to start a local Ray cluster for the run") from None
    try:
        with socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{label} ray: the Ray cluster at RAY_ADDRESS {address} does not answer on {host}:{port} "
            f"({exc.strerror or exc}): start it (`make ray-up` prints the address to export), fix "
            "RAY_ADDRESS, or unset it to start a local cluster for the run") from None
