"""Built-in datasets downloaded over HTTP from a local server, checksummed, and read."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_builtins import extractor, write_cifar10, write_flowers, write_idx_set
from transferflow.data.builtins import BUILTINS, Arrays, Builtin, Folder
from transferflow.data.downloads import Checksum, download
from transferflow.errors import ChecksumError


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A local HTTP server holding small copies of mnist, cifar10 and tf_flowers under /<name>/."""
    root = tmp_path_factory.mktemp("www")
    write_idx_set(root / "mnist", "mnist")
    write_cifar10(root / "cifar10")
    write_flowers(root / "tf_flowers")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", root
    httpd.shutdown()


def local(name: str, base: str, root: Path) -> Builtin:
    """The built-in with each file's URL, sha256 and size replaced by the local copy's."""
    def remote(r):
        path = root / name / r.filename
        return dataclasses.replace(r, url=f"{base}/{name}/{r.filename}", size=path.stat().st_size,
                                   sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    return dataclasses.replace(BUILTINS[name], files=tuple(remote(r) for r in BUILTINS[name].files))


def fetch(builtin: Builtin, target: Path) -> list[Path]:
    """Download every file of `builtin` as the pipeline does: by URL, into one folder, checksummed."""
    paths = [download(r.url, target / r.filename, Checksum("sha256", r.sha256)) for r in builtin.files]
    assert [p.stat().st_size for p in paths] == [r.size for r in builtin.files]
    return paths


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_array_builtin_is_downloaded_and_read(server, tmp_path, name):
    builtin = local(name, *server)
    data = builtin.read(fetch(builtin, tmp_path / "downloads" / name), extractor(tmp_path))
    assert isinstance(data, Arrays) and len(data.class_names) == 10
    x, y = data.splits["train"]
    assert x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3 and len(x) == len(y) > 0


def test_folder_builtin_is_downloaded_and_scanned(server, tmp_path):
    from transferflow.data import scan_folder

    builtin = local("tf_flowers", *server)
    data = builtin.read(fetch(builtin, tmp_path / "downloads"), extractor(tmp_path))
    assert isinstance(data, Folder)
    scan = scan_folder(data.root)
    assert scan.class_names == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert {split: len(files) for split, files in scan.files.items()} == {"train": 10}


def test_wrong_checksum_is_refused_and_discarded(server, tmp_path):
    remote = local("cifar10", *server).files[0]
    target = tmp_path / remote.filename
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download(remote.url, target, Checksum("sha256", "0" * 64))
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_folder_builtin_prepares_through_the_pipeline(bucket, tmp_path, monkeypatch):
    """tf_flowers end to end: downloaded, checksummed, extracted, scanned, decoded, mirrored."""
    from tests.integration.test_mirror import Origin
    from transferflow.data import PrepareOptions, prepare_dataset

    write_flowers(tmp_path / "www" / "tf_flowers", per_class=4)
    origin = Origin(tmp_path / "www")
    monkeypatch.setitem(BUILTINS, "tf_flowers", local("tf_flowers", origin.base, tmp_path / "www"))
    try:
        ref = prepare_dataset("tf_flowers", PrepareOptions(32, 0.25, 0.25, 0))
    finally:
        origin.stop()
    assert ref.class_names == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert sum(sum(c.values()) for c in ref.counts.values()) == 20
    assert all(len(ref.counts[split]) == 5 for split in ("train", "val", "test"))  # each class in each
    monkeypatch.setenv("TRANSFERFLOW_CACHE_DIR", str(tmp_path / "offline-worker"))
    assert prepare_dataset("tf_flowers", PrepareOptions(40, 0.25, 0.25, 0)).image_size == 40  # mirror
