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
