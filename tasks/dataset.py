from prefect import task
from prefect.logging import get_run_logger

from tasks.policies import retry_transient
from transferflow import phases
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef


@task(name="check_storage")
def check_storage() -> str:
    """Make sure the bucket exists and answers before anything expensive starts.

    No task-level retries: boto3 already retries each request, and a wrong endpoint
    should be reported in seconds, not after minutes of waiting.
    """
    where = phases.check_storage()
    get_run_logger().info("object storage: %s", where)
    return where


# Downloads already retry with backoff and resume inside; one task retry covers
# a checksum mismatch (the bad file is discarded) and longer storage outages.
@task(name="download_dataset", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient)
def download_dataset(config: RetrainConfig) -> DatasetRef:
    """Fetch, check, decode, split and store the dataset; reuses an identical earlier preparation."""
    return phases.download_dataset(config, logger=get_run_logger())
