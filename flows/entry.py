"""The Prefect side of `transferflow train`: the CLI (which imports no Prefect) calls
`train_here` by name, so the plain package never depends on the flows."""

import os

from transferflow.config import RetrainConfig


def train_here(config: RetrainConfig) -> dict:
    """Run the retrain flow in this process (Prefect's ephemeral API when PREFECT_API_URL is unset)."""
    # The ephemeral server's usage heartbeat calls out to the internet: not on training clusters.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from transferflow_flows.retrain import retrain  # Prefect starts up here, after the checks

    return retrain(config=config)


def watch_here(prefixes: list[str], interval_s: float, debounce_s: float, polls: int | None = None) -> None:
    """`transferflow watch`: poll the prefixes and emit transferflow.dataset.changed (Prefect's API
    at PREFECT_API_URL) once each change has settled."""
    from transferflow.watch import watch
    from transferflow_tasks.events import emit_dataset_changed

    watch(prefixes, emit_dataset_changed, interval_s, debounce_s, polls)
