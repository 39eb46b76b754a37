from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from transferflow import publishing
from transferflow.data import DatasetRef


@task(name="evaluate_model")
def evaluate_model(dataset: DatasetRef, model_uri: str, batch_size: int) -> dict:
    """Accuracy and per-class accuracy on the held-out test split."""
    return publishing.evaluate_model(dataset, model_uri, batch_size, logger=get_run_logger())


@task(name="reproduce_evaluation")
def reproduce_evaluation(reference: str, tolerance: float) -> dict:
    """Verify the registered artifact and re-run its test evaluation."""
    result = publishing.reproduce_evaluation(reference, tolerance, logger=get_run_logger())
    create_markdown_artifact(
        f"# {result['reference']}: evaluation reproduced\n\n"
        f"- artifact sha256 verified: `{result['sha256'][:16]}…`\n"
        f"- recorded test accuracy: {result['recorded']:.4f}\n"
        f"- reproduced test accuracy: {result['reproduced']:.4f}\n",
        key="evaluation-check", description=result["reference"])
    return result
