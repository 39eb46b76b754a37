"""Small guards: the Python version the archive extraction needs, the dev stack's platform."""

import tomllib
from pathlib import Path

import pytest

from transferflow.devstack import daemons

ROOT = Path(__file__).resolve().parents[2]


def test_python_3_11_4_is_required_where_python_is_checked():
    """tarfile's extraction filter (filter="data") arrived in 3.11.4."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11.4"
    assert "sys.version_info >= (3, 11, 4)" in (ROOT / "Makefile").read_text()


def test_the_dev_stack_refuses_clearly_where_there_is_no_proc(monkeypatch, tmp_path):
    monkeypatch.setattr(daemons.sys, "platform", "darwin")
    pid_file = tmp_path / "server.pid"
    pid_file.write_text("123 456")
    with pytest.raises(RuntimeError, match="needs Linux's /proc .* this is darwin"):
        daemons.stop_pid_file(pid_file)
    assert pid_file.exists()  # nothing forgotten while its process may still run


def test_services_stopped_together_are_all_gone_and_forgotten(tmp_path):
    """`make stack-down` stops the watcher and both workers with one stop_pid_files: one that
    ignores SIGTERM is killed after the grace, the other exits on SIGTERM, no pid file is left."""
    import os
    import sys

    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('up', flush=True); time.sleep(60)")
    polite = "import time; print('up', flush=True); time.sleep(60)"
    files = []
    for name, code in (("stubborn", stubborn), ("polite", polite)):
        files.append(tmp_path / f"{name}.pid")
        log = tmp_path / f"{name}.log"
        daemons.spawn([sys.executable, "-c", code], log_path=log, env=dict(os.environ), pid_file=files[-1])
        daemons.wait_until(lambda log=log: "up" in log.read_text(), what=name, timeout=30, log_path=log)
    pids = [daemons.read_pid(f) for f in files]
    assert daemons.stop_pid_files([*files, tmp_path / "never-started.pid"], timeout=1) == [*pids, None]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not any(f.exists() for f in files)
