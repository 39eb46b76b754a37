"""`make ray-up` / `make ray-down`: a local cluster of separate Ray nodes, and no process of it left
once it is stopped (checked by pid and start time, so a reused pid cannot pass for one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_ray_up_starts_a_node_per_worker_and_make_ray_down_leaves_no_process(tmp_path):
    pytest.importorskip("ray", reason="engine ray needs pip install -e '.[ray]' (make venv installs it)")
    from transferflow.devstack import raycluster

    facts = raycluster.up(tmp_path, workers=1)  # what `make ray-up` runs (its venv step aside)
    try:
        tree = raycluster.process_tree(facts["pid"])
        raylets = [pid for pid in tree if "/raylet/raylet " in command_line(pid)]
        assert facts["nodes"] == 2 and len(raylets) == 2  # a head and a worker: a raylet each
        assert raycluster.up(tmp_path, workers=1) == facts  # already running: the same cluster
    finally:
        stopped = subprocess.run(["make", "-s", "ray-down", f"RAY_DIR={tmp_path}"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    assert "ray cluster stopped" in stopped.stdout
    left = [pid for pid, started in tree.items() if raycluster.is_running(pid, started)]
    assert not left, [command_line(pid) for pid in left]
    assert raycluster.status(tmp_path) is None
