"""The Prefect side of `transferflow train`: the CLI (which imports no Prefect) calls
`train_here` by name, so the plain package never depends on the flows."""

import os

from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError

STARTUP_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
# Prefect waits 20 s for its temporary API server by default. On a busy 2-core machine (another
# run starting, TensorFlow importing) it was seen to need more; a user's own value is kept.
STARTUP_TIMEOUT_S = "120"
TIMED_OUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def train_here(config: RetrainConfig) -> dict:
    """Run the retrain flow in this process (Prefect's ephemeral API when PREFECT_API_URL is unset)."""
    # The ephemeral server's usage heartbeat calls out to the internet: not on training clusters.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(STARTUP_VARIABLE, STARTUP_TIMEOUT_S)
    from transferflow_flows.retrain import retrain  # Prefect starts up here, after the checks

    try:
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
