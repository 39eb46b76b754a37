"""The shared local cache: its cross-process lock, and paths that cannot leave it."""

import multiprocessing
import sys
import time
import types

import pytest

from transferflow import localcache
from transferflow.errors import ConfigError, StorageError


def hold(target: str, events, name: str, entered, trying) -> None:
    """Take the lock on `target`; the first holder keeps it until the second is trying too."""
    from pathlib import Path

    if name == "second":
        trying.set()
    with localcache.locked(Path(target)):
        events.put(f"{name} in")
        entered.set()
        if name == "first":
            trying.wait(60)
            time.sleep(0.3)  # the second process is waiting on the lock now (or, without it, inside)
        events.put(f"{name} out")


def test_a_second_process_waits_for_the_lock_on_the_same_target(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERFLOW_CACHE_DIR", str(tmp_path / "cache"))
    context = multiprocessing.get_context("spawn")  # as two separate runs would
    events, first_in, second_in, trying = context.Queue(), context.Event(), context.Event(), context.Event()
    target = str(tmp_path / "cache" / "downloads" / "archive.tar.gz")
    first = context.Process(target=hold, args=(target, events, "first", first_in, trying))
    first.start()
    assert first_in.wait(60)
    second = context.Process(target=hold, args=(target, events, "second", second_in, trying))
    second.start()
    for process in (first, second):
        process.join(60)
    order = [events.get(timeout=5) for _ in range(4)]
    assert order == ["first in", "first out", "second in", "second out"]


def test_the_lock_files_live_apart_from_the_cached_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERFLOW_CACHE_DIR", str(tmp_path))
    target = tmp_path / "extracted" / "abc"
    with localcache.locked(target):
        pass
    assert not target.exists() and len(list((tmp_path / "locks").glob("*.lock"))) == 1


@pytest.mark.parametrize("key", ["../../etc/passwd", "a/../../b", "/abs/key", ""])
def test_an_object_key_that_would_leave_the_cache_is_refused(tmp_path, monkeypatch, key):
    monkeypatch.setenv("TRANSFERFLOW_CACHE_DIR", str(tmp_path))
    with pytest.raises(StorageError, match="outside the cache folder"):
        localcache.cache_path("bucket", key)
    assert localcache.cache_path("bucket", "a/b.npz") == tmp_path / "s3" / "bucket" / "a" / "b.npz"


def test_an_ephemeral_prefect_start_that_times_out_says_what_to_do(monkeypatch):
    from transferflow.config import RetrainConfig
    from transferflow_flows import entry

    def timed_out(config):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setitem(sys.modules, "transferflow_flows.retrain", types.SimpleNamespace(retrain=timed_out))
    monkeypatch.setenv(entry.STARTUP_VARIABLE, "unset below; restored to its absence after the test")
    monkeypatch.delenv(entry.STARTUP_VARIABLE)
    with pytest.raises(ConfigError, match=r"did not answer within 120 s .* Run it again; wait longer with "
                       r"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180; or start one server"):
        entry.train_here(RetrainConfig(dataset="x"))
    import os

    assert os.environ[entry.STARTUP_VARIABLE] == "120"  # Prefect's 20 s default, raised


def test_the_background_start_of_prefects_server_times_out_into_the_same_message(monkeypatch):
    """`transferflow train` starts Prefect's temporary server while TensorFlow imports; a start
    that fails there is raised where train_here waits for it, before any flow runs."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from transferflow.config import RetrainConfig
    from transferflow_flows import entry

    flows_run = []
    monkeypatch.setattr(entry, "_starting", {})
    monkeypatch.setitem(sys.modules, "transferflow_flows.retrain",
                        types.SimpleNamespace(retrain=lambda config: flows_run.append(config)))

    def timed_out(self, timeout=None):
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.setattr(SubprocessASGIServer, "start", timed_out)
    with temporary_settings(updates={PREFECT_API_URL: None}):  # Prefect reads its variables on import
        entry.start_prefect()
    assert entry._starting["thread"].name == "prefect-server-start"
    with pytest.raises(ConfigError, match="Prefect's temporary API server did not answer"):
        entry.train_here(RetrainConfig(dataset="x"))
    assert flows_run == []


def test_no_server_is_started_when_runs_use_a_prefect_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from transferflow_flows import entry

    monkeypatch.setattr(entry, "_starting", {})
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        entry.start_prefect()
    assert entry._starting == {}
