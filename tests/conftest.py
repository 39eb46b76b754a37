"""Shared fixtures. Integration tests run against a real SeaweedFS S3 server that
this session starts on free loopback ports, with its own credentials."""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Prefect's home is this test process's own, set before anything imports Prefect: its database and
# the results tasks persist there (the dataset task's cache among them), so no test reads or writes
# the user's ~/.prefect or finds a previous session's cached results. Nor do runs go to the user's
# server: a test that wants one sets PREFECT_API_URL itself.
_PREFECT_HOME = tempfile.mkdtemp(prefix="transferflow-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_PROFILE", None)
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "TRANSFERFLOW_BUCKET")


# Under pytest-xdist (`make test`: -n 2 --dist loadgroup) a test's group goes to one worker whole.
# The groups: a test file under integration/ or faults/ (its module-scoped servers, a Prefect test
# server or the deployment stack, start once), every engine ray test (scaleout/: they share one Ray
# cluster), and each unit test on its own (cheap and independent: they fill the gaps at the end).
# xdist's own loadgroup cannot be used for this: it marks a group by editing the test's node id,
# which pytest 9 no longer reads (pytest-dev/pytest-xdist#1386), so every test became a group of
# its own and each worker started its own stack, Ray cluster and Prefect servers. The groups are
# decided here, from the node id, in xdist's scheduler.
#
# The longest groups go first (longest-first is the usual greedy rule for a short finish); their
# order, from `make test --durations` (2 cores): Ray 8 min, the deployment stack 5, the rest < 2.
FIRST = ("scaleout/", "integration/test_deployments.py", "integration/test_real_photos.py",
         "integration/test_cli.py", "integration/test_cached_activations.py",
         "integration/test_retraining.py", "integration/test_shared_cache.py",
         "integration/test_retrain_flow.py", "faults/test_preemption.py")


def _path(nodeid: str) -> str:
    """A test's file under tests/, from its node id ("tests/integration/test_cli.py::test_x")."""
    return nodeid.split("::", 1)[0].removeprefix("tests/")


def group_of(nodeid: str) -> str:
    """The group of a test, by its node id."""
    path = _path(nodeid)
    if path.startswith("scaleout/"):
        return "ray"
    return nodeid if path.startswith("unit/") else path


def _rank(nodeid: str) -> int:
    path = _path(nodeid)
    first = [i for i, prefix in enumerate(FIRST) if path.startswith(prefix)]
    return first[0] if first else len(FIRST) + path.startswith("unit/")


def pytest_collection_modifyitems(config, items):
    """Longest groups first, unit tests last (a stable sort: each file keeps its own order). Every
    worker collects alike, and the scheduler hands groups out in this order."""
    items.sort(key=lambda item: _rank(item.nodeid))


def pytest_xdist_make_scheduler(config, log):
    """Groups as `group_of` says, handed out in collection order."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ServerGroups(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # keep the order above, not "most tests first"

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid)

    return ServerGroups(config, log)


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
