from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient
from transferflow import phases
from transferflow.config import RetrainConfig
from transferflow.report import run_report


@task(name="register_model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def register_model(config: RetrainConfig, metadata: dict, final: phases.PhaseOutcome,
                   run_id: str) -> dict:
    """Publish a verified new version, move `latest`, then drop the run's staged models."""
    logger = get_run_logger()
    registered = phases.register_model(config, metadata, final, run_id, logger=logger)
    removed = phases.cleanup_run(run_id)
    logger.info("removed %d staged objects of run %s", removed, run_id)
    create_markdown_artifact(run_report(metadata, registered), key="retrain-report",
                             description="transferflow retrain run report")
    return registered
