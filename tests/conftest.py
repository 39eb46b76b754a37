"""Shared fixtures. Integration tests run against a real SeaweedFS S3 server that
this session starts on free loopback ports, with its own credentials."""

from __future__ import annotations

import logging
import os
import secrets
import uuid
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "TRANSFERFLOW_BUCKET")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`: -n 2 --dist loadgroup), tests that share an expensive fixture
    run on one worker: a test file's module-scoped servers (a Prefect test server, the deployment
    stack) start once, and the engine ray tests share one Ray cluster. Unit tests, cheap and
    independent, are spread one by one. Each worker has its own session S3 server on free ports."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
        if parts[0] == "unit":
            continue
        group = "ray" if parts[0] == "scaleout" else "/".join(parts)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory):
    """No test touches the user's AWS settings, cache or Prefect home."""
    saved = {name: os.environ.pop(name, None) for name in AWS_VARS}
    cache = tmp_path_factory.mktemp("cache")
    os.environ["TRANSFERFLOW_CACHE_DIR"] = str(cache)
    yield cache
    for name, value in saved.items():
        if value is not None:
            os.environ[name] = value


@pytest.fixture(scope="module")
def prefect_server():
    """Prefect's test server for one test module (started once per module, as runs need an API)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from transferflow.devstack import s3server

    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"), access_key="tf-test-access",
                            secret_key="tf-test-" + secrets.token_hex(12))
    os.environ.update(server.env())
    yield server
    s3server.stop_process(server.process)
    for name in server.env():
        os.environ.pop(name, None)


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A fresh bucket per test, set as TRANSFERFLOW_BUCKET."""
    from transferflow import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("TRANSFERFLOW_BUCKET", name)
    storage.ensure_bucket(name)
    yield name
    # SeaweedFS gives every bucket its own volumes, and the session's server has a fixed number
    # of them: a bucket left behind by each test would exhaust it ("no free volumes left").
    try:
        storage.abort_stale_uploads(name, older_than_s=0)
        storage.delete_prefix(name, "")
        storage.client().delete_bucket(Bucket=name)
    except Exception as exc:  # the test's own outcome stands; say why the cleanup did not happen
        warnings.warn(f"could not remove test bucket {name}: {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """3 learnable classes x 30 images at 32 px, PNG and JPEG mixed."""
    from transferflow.devstack.samples import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "shapes", classes=3, per_class=30)


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """A randomly initialised headless VGG16, saved as real weights are."""
    from transferflow.devstack.samples import write_random_weights

    return write_random_weights(tmp_path_factory.mktemp("weights") / "vgg16-random.weights.h5")


def upload_folder(folder: Path, bucket: str, prefix: str) -> str:
    from transferflow import storage

    for path in sorted(folder.rglob("*")):
        if path.is_file():
            storage.upload_file(path, bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return f"s3://{bucket}/{prefix}/"


class Lines(logging.Handler):
    """A logging handler that keeps each message, for tests that check what a run logged."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())
