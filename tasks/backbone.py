from prefect import task
from prefect.logging import get_run_logger

from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef
from transferflow.pipeline import phases
from transferflow_tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient


@task(name="build_backbone", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def build_backbone(config: RetrainConfig, dataset: DatasetRef) -> phases.BackboneRef:
    """Fetch the backbone's weights and check they fit the prepared images, before any training."""
    return phases.build_backbone(config, dataset, logger=get_run_logger())
