from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef
from transferflow.judging import evaluation
from transferflow.pipeline.phases import PhaseOutcome
from transferflow.publishing import stages as publishing
from transferflow.registry.documents import Calibration
from transferflow_tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient


@task(name="calibrate_model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def calibrate_model(config: RetrainConfig, dataset: DatasetRef, final: PhaseOutcome,
                    run_id: str) -> tuple[PhaseOutcome, Calibration]:
    """Fold a temperature fitted on the validation split into the final model, if it helps."""
    return publishing.calibrate_model(config, dataset, final, run_id, logger=get_run_logger())


@task(name="evaluate_model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def evaluate_model(config: RetrainConfig, dataset: DatasetRef, final: PhaseOutcome,
                   run_id: str) -> tuple[publishing.Evaluation, dict]:
    """Every metric on the held-out test split (and the model's golden set, if one is set), and the
    monitoring reference staged for registration: one pass over the test and val splits serves both."""
    return publishing.evaluate_and_stage_reference(config, dataset, final, run_id, logger=get_run_logger())


@task(name="reproduce_evaluation")
def reproduce_evaluation(reference: str, tolerance: float) -> dict:
    """Verify the registered artifact and re-run its test evaluation."""
    result = evaluation.reproduce_evaluation(reference, tolerance, logger=get_run_logger())
    create_markdown_artifact(
        f"# {result['reference']}: evaluation reproduced\n\n"
        f"- artifact sha256 verified: `{result['sha256'][:16]}…`\n"
        f"- recorded test accuracy: {result['recorded']:.4f}\n"
        f"- reproduced test accuracy: {result['reproduced']:.4f} (macro-F1 {result['macro_f1']:.4f}, "
        f"calibration error {result['ece']:.4f})\n",
        key="evaluation-check", description=result["reference"])
    return result
