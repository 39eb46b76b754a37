from datetime import timedelta

from prefect import task
from prefect.logging import get_run_logger

from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef
from transferflow.pipeline import phases
from transferflow.pipeline.preflight import preflight
from transferflow.retraining import changes
from transferflow.training.warmstart import resolve_init_from
from transferflow_tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient


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
def check_inputs(config: RetrainConfig) -> RetrainConfig:
    """Refuse a missing dataset path or weights file (or a malformed URL, or an init_from that
    cannot warm-start) before any download: a bad weights path is otherwise found only after the
    dataset is prepared. Returns the config with init_from pinned to a version number."""
    preflight(config)
    return resolve_init_from(config, get_run_logger())


@task(name="check_changes", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def check_changes(config: RetrainConfig, announced: str | None = None) -> changes.ChangeCheck:
    """Before any download or decode: is there anything new to train on? (listings and stats only)
    `announced` is the listing fingerprint of the event that started the run, if one did."""
    check, logger = changes.check_changes(config), get_run_logger()
    if announced is not None and announced != check.signature.source:
        logger.info("%s changed again since the event that started this run: the current listing counts",
                    config.dataset)
    logger.info(check.reason)
    return check


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
