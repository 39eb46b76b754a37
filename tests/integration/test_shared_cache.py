"""One host, two runs: two `transferflow train` processes on the same http(s) archive URI, one
local cache, started together. The archive is served slowly, so that both want it at once: one
downloads (its resumable .part) and unpacks it (its .extracting folder) while the other waits on
the cache's lock, then both train on the same bytes. Without the locks, both wrote into one .part.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from functools import partial

import pytest

from tests.integration.test_cli import run_cli
from transferflow import storage

CHUNK, PAUSE_S = 16 * 1024, 0.25  # about 64 KB/s: the archive takes a few seconds to download


class SlowHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files in small chunks with pauses, as a slow origin does (no Range support)."""

    def copyfile(self, source, outputfile):
        while chunk := source.read(CHUNK):
            outputfile.write(chunk)
            outputfile.flush()
            time.sleep(PAUSE_S)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_archive_url(tmp_path):
    from transferflow.devstack.samples import write_dataset

    root = write_dataset(tmp_path / "patterns", classes=4, per_class=8, splits=("train", "val", "test"),
                         kind="patterns", formats=("png",))
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "patterns.tar.gz", "w:gz") as tar:
        tar.add(root, arcname="patterns")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(SlowHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/patterns.tar.gz"
    server.shutdown()


@pytest.mark.slow
def test_two_runs_on_one_http_uri_share_the_cache_and_train_on_the_same_bytes(bucket, slow_archive_url,
                                                                               random_weights, tmp_path):
    storage.upload_file(random_weights, bucket, "w/vgg16.weights.h5")
    command = [sys.executable, "-m", "transferflow.cli", "train", "--dataset", slow_archive_url,
               "--weights", f"s3://{bucket}/w/vgg16.weights.h5", "--image-size", "32", "--head-epochs", "1",
               "--fine-tune-epochs", "1", "--model-name", "shared", "--batch-size", "16"]
    runs = []
    for index in range(2):  # each its own Prefect home; one cache (the session's TRANSFERFLOW_CACHE_DIR)
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"prefect-{index}"), "PREFECT_API_URL": ""}
        runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env))
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output[-4000:]
    assert sorted("registered shared version" in output for output in outputs) == [True, True]
    fingerprints = []
    for version in (1, 2):
        shown = run_cli("models", "show", f"shared:{version}", "--json")
        assert shown.returncode == 0, shown.stderr[-2000:]
        fingerprints.append(json.loads(shown.stdout)["dataset"]["fingerprint"])
    assert fingerprints[0] == fingerprints[1]
    joined = "\n".join(outputs)
    downloaded_once = ("waiting for another process writing" in joined or "using cached download" in joined
                       or "already prepared" in joined)
    assert downloaded_once, joined[-4000:]
