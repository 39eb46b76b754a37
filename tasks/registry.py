from prefect import task
from prefect.logging import get_run_logger

from tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient
from transferflow import phases
from transferflow.config import RetrainConfig


@task(name="register_model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def register_model(config: RetrainConfig, metadata: dict, final: phases.PhaseOutcome,
                   run_id: str) -> dict:
    """Publish a verified new version, move `latest`, then drop the run's staged models.

    Safe to retry: the same run_id reuses the version it reserved.
    """
    logger = get_run_logger()
    registered = phases.register_model(config, metadata, final, run_id, logger=logger)
    removed = phases.cleanup_run(run_id)
    logger.info("removed %d staged objects of run %s", removed, run_id)
    return registered
