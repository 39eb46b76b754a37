from datetime import timedelta

from prefect import task
from prefect.logging import get_run_logger

from transferflow import phases
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef
from transferflow.preflight import preflight
from transferflow_tasks.policies import retry_transient


@task(name="check_storage")
def check_storage() -> str:
    """Make sure the bucket exists and answers before anything expensive starts.

    No task-level retries: boto3 already retries each request, and a wrong endpoint
    should be reported in seconds, not after minutes of waiting.
    """
    where = phases.check_storage()
    get_run_logger().info("object storage: %s", where)
    return where


@task(name="check_inputs")
def check_inputs(config: RetrainConfig) -> None:
    """Refuse a missing dataset path or weights file (or a malformed URL) before any download:
    a bad weights path is otherwise found only after the dataset is prepared."""
    preflight(config)


def dataset_cache_key(context, parameters) -> str | None:
    """Cache on the source's signature (checksum, S3 ETags, file stats) and the preparation options."""
    return phases.dataset_cache_key(parameters["config"])


# Downloads already retry transient faults with backoff and resume inside (and fetch a file
# with a wrong checksum once more); one task retry covers longer network and storage outages.
# Permanent faults (unknown host, 404/403, the same wrong checksum twice) are not retried.
# An unchanged dataset is not prepared twice within a day: the task result is cached
# (PREFECT_TASKS_REFRESH_CACHE=true ignores it); after that the stored copy is still reused.
@task(name="download_dataset", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_transient,
      cache_key_fn=dataset_cache_key, cache_expiration=timedelta(days=1), persist_result=True)
def download_dataset(config: RetrainConfig) -> DatasetRef:
    """Fetch, check, decode, split and store the dataset; reuses an identical earlier preparation."""
    return phases.download_dataset(config, logger=get_run_logger())
