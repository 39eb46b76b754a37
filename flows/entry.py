"""The Prefect side of `transferflow train`: the CLI (which imports no Prefect) calls
`train_here` by name, so the plain package never depends on the flows."""

import os

from transferflow.config import RetrainConfig


def train_here(config: RetrainConfig) -> dict:
    """Run the retrain flow in this process (Prefect's ephemeral API when PREFECT_API_URL is unset)."""
    # The ephemeral server's usage heartbeat calls out to the internet: not on training clusters.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's ephemeral API gives up after 20 s, which a busy 2-core machine can exceed (seen: the
    # run failed before any stage); training is minutes long, so waiting longer costs nothing
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from transferflow_flows.retrain import retrain  # Prefect starts up here, after the checks

    return retrain(config=config)
