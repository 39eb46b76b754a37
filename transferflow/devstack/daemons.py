"""Background services for the local stack: start detached with a pid file and a
log, wait until ready, stop the whole process group. Used by s3server and stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def require_proc() -> None:
    """The local stack tells its own processes from others by /proc (Linux only): elsewhere it
    refuses, rather than delete pid files and leave processes running."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"the local dev stack (make stack-up, storage-up, ray-up) needs Linux's /proc to "
                           f"track its processes; this is {sys.platform}. Run it in a Linux container or VM, "
                           "or point AWS_ENDPOINT_URL and PREFECT_API_URL at services you run yourself")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    require_proc()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def read_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that very process still runs (not a reused pid), else None.

    The file holds "<pid> <start time>"; a process with the same pid but another start
    time is someone else's.
    """
    try:
        pid_text, _, started = pid_file.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    current = _start_time(pid)
    if current is None or (started and current != started):
        return None
    return pid


def write_pid(pid_file: Path, pid: int) -> None:
    pid_file.write_text(f"{pid} {_start_time(pid) or ''}".strip())


def spawn(command: list[str], *, log_path: Path, env: dict[str, str], pid_file: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session (so stopping it stops its children too)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    if pid_file is not None:
        write_pid(pid_file, process.pid)
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
    """SIGTERM the process group, then SIGKILL what is left after `timeout`.

    Only for processes started by `spawn`, which lead their own group.
    """
    stop_groups([pid], timeout)


def stop_groups(pids: list[int], timeout: float = 20) -> None:
    """stop_group for several services at once: all are signalled together and the waits overlap,
    so stopping N slow services takes one timeout, not N."""
    leaders = []
    for pid in pids:
        try:
            if os.getpgid(pid) != pid:
                os.kill(pid, signal.SIGTERM)  # not a group leader: never signal a stranger's group
                continue
        except ProcessLookupError:
            continue
        leaders.append(pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        for pid in list(leaders):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                leaders.remove(pid)
        deadline = time.monotonic() + wait
        while leaders and time.monotonic() < deadline:
            for pid in list(leaders):
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    leaders.remove(pid)
                    continue
                _reap(pid)
            time.sleep(0.1)
        if not leaders:
            return


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def start_checked(command: list[str], *, what: str, ready: Callable[[], bool], timeout: float,
                  log_path: Path, env: dict[str, str], pid_file: Path,
                  cwd: Path | None = None) -> subprocess.Popen:
    """spawn + wait_until; if it never becomes ready, stop it and forget its pid file."""
    process = spawn(command, log_path=log_path, env=env, pid_file=pid_file, cwd=cwd)
    try:
        wait_until(ready, what=what, timeout=timeout, log_path=log_path, process=process)
    except BaseException:
        stop_group(process.pid, timeout=10)
        pid_file.unlink(missing_ok=True)
        raise
    return process


def stop_pid_file(pid_file: Path, timeout: float = 20) -> int | None:
    """Stop the service recorded in `pid_file` and remove the file; returns the pid stopped."""
    return stop_pid_files([pid_file], timeout)[0]


def stop_pid_files(pid_files: list[Path], timeout: float = 20) -> list[int | None]:
    """Stop the services recorded in `pid_files` together (stop_groups) and remove the files;
    returns the pids stopped, None where a file named no running process."""
    pids = [read_pid(pid_file) for pid_file in pid_files]
    stop_groups([pid for pid in pids if pid is not None], timeout)
    for pid_file in pid_files:
        pid_file.unlink(missing_ok=True)
    return pids
