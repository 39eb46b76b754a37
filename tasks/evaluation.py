from prefect import task
from prefect.logging import get_run_logger

from transferflow import phases
from transferflow.data import DatasetRef


@task(name="evaluate_model")
def evaluate_model(dataset: DatasetRef, model_uri: str, batch_size: int) -> dict:
    """Accuracy and per-class accuracy on the held-out test split."""
    return phases.evaluate_model(dataset, model_uri, batch_size, logger=get_run_logger())
