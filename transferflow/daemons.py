"""Background services for the local stack: start detached with a pid file and a
log, wait until ready, stop the whole process group. Used by s3server and stack."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is still alive, else None."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def spawn(command: list[str], *, log_path: Path, env: dict[str, str], pid_file: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session (so stopping it stops its children too)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    if pid_file is not None:
        pid_file.write_text(str(process.pid))
    return process


def wait_until(ready: Callable[[], bool], *, what: str, timeout: float, log_path: Path,
               process: subprocess.Popen | None = None, interval: float = 0.3) -> None:
    """Poll `ready` until it is true; fail early, with the log's tail, if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}:\n{tail(log_path)}")
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused and the like
            pass
        time.sleep(interval)
    raise RuntimeError(f"{what} was not ready after {timeout:.0f}s; last log lines:\n{tail(log_path)}")


def tail(log_path: Path, chars: int = 2000) -> str:
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop_group(pid: int, timeout: float = 20) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.1)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pid_file(pid_file: Path, timeout: float = 20) -> int | None:
    """Stop the service recorded in `pid_file` and remove the file; returns the pid stopped."""
    pid = read_pid(pid_file)
    if pid is not None:
        stop_group(pid, timeout)
    pid_file.unlink(missing_ok=True)
    return pid
