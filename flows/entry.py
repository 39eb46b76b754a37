"""The Prefect side of `transferflow train`: the CLI (which imports no Prefect) calls
`train_here` by name, so the plain package never depends on the flows."""

import os
import threading
import time

from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError

STARTUP_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Prefect waits 20 s for its temporary API server by default. On a busy 2-core machine (another
# run starting, TensorFlow importing) it was seen to need more; a user's own value is kept.
STARTUP_TIMEOUT_S = "120"
TIMED_OUT = "Timed out while attempting to connect to ephemeral Prefect API server"

_starting: dict[str, object] = {}  # the background start of Prefect's temporary server, if any


def _prefect_environment() -> None:
    # The ephemeral server's usage heartbeat calls out to the internet: not on training clusters.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(STARTUP_VARIABLE, STARTUP_TIMEOUT_S)


def start_prefect() -> None:
    """Start Prefect's temporary API server now, in the background, when runs use one (no
    PREFECT_API_URL): it takes 5-10 s, its own process, and `transferflow train` imports TensorFlow
    meanwhile instead of waiting for it after. `train_here` waits for it before the flow starts."""
    _prefect_environment()
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() or _starting:
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's client takes, so it is started once

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # raised again where train_here waits for the server
            _starting["error"] = exc

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    _starting["thread"] = thread
    thread.start()
    # Return once its process exists: it inherits this process's stderr, which the TensorFlow import
    # that follows points at a temporary file for a moment.
    while thread.is_alive() and server.server_process is None:
        time.sleep(0.01)


def _wait_for_prefect() -> None:
    thread = _starting.get("thread")
    if thread is not None:
        thread.join()
    if "error" in _starting:
        raise _starting.pop("error")


def train_here(config: RetrainConfig) -> dict:
    """Run the retrain flow in this process (Prefect's ephemeral API when PREFECT_API_URL is unset)."""
    _prefect_environment()
    from transferflow_flows.retrain import retrain  # Prefect starts up here, after the checks

    try:
        _wait_for_prefect()
        return retrain(config=config)
    except RuntimeError as exc:
        if TIMED_OUT not in str(exc):
            raise
        raise ConfigError(ephemeral_timeout_message()) from None


def ephemeral_timeout_message() -> str:
    waited = os.environ.get(STARTUP_VARIABLE, STARTUP_TIMEOUT_S)
    return (f"Prefect's temporary API server did not answer within {waited} s (the machine is busy, "
            f"e.g. other runs starting): nothing was trained. Run it again; wait longer with "
            f"{STARTUP_VARIABLE}=180; or start one server for all runs (`make server`, or `prefect server "
            "start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api")


def watch_here(prefixes: list[str], interval_s: float, debounce_s: float, polls: int | None = None) -> None:
    """`transferflow watch`: poll the prefixes and emit transferflow.dataset.changed (Prefect's API
    at PREFECT_API_URL) once each change has settled."""
    from transferflow.retraining.watch import watch
    from transferflow_tasks.events import emit_dataset_changed

    watch(prefixes, emit_dataset_changed, interval_s, debounce_s, polls)
