"""Retry policy shared by the I/O tasks: retry what may pass, fail fast on bad input."""

from __future__ import annotations

from transferflow.errors import DownloadError, PermanentError, StorageError

IO_RETRIES = 2
IO_RETRY_DELAYS = [5, 30]


def retry_transient(task, task_run, state) -> bool:
    """Retry storage hiccups and failed downloads; a bad path or bad config will not fix itself,
    nor will a permanent fault (unknown host, HTTP 404/403, the same wrong checksum twice)."""
    try:
        state.result()
    except PermanentError:
        return False
    except (StorageError, DownloadError, ConnectionError, TimeoutError):
        return True
    except Exception:
        return False
    return False
