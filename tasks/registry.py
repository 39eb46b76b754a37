from prefect import task
from prefect.logging import get_run_logger

from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef
from transferflow.judging.promotion import PromotionDecision
from transferflow.pipeline import phases
from transferflow.publishing import stages as publishing
from transferflow.registry.documents import Registration, TrainingRecord
from transferflow_tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient


@task(name="register_model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def register_model(config: RetrainConfig, metadata: TrainingRecord, final: phases.PhaseOutcome,
                   run_id: str) -> Registration:
    """Publish a verified new version, move `latest`, then drop the run's staged models.

    Safe to retry: the same run_id reuses the version it reserved.
    """
    logger = get_run_logger()
    registered = publishing.register_model(config, metadata, final, run_id, logger=logger)
    removed = publishing.cleanup_run(run_id)
    logger.info("removed %d staged objects of run %s", removed, run_id)
    return registered


@task(name="decide_promotion", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def decide_promotion(config: RetrainConfig, dataset: DatasetRef,
                     evaluation: publishing.Evaluation) -> PromotionDecision:
    """Bless the new model or not: the floor, then production scored on the same images."""
    return publishing.decide_promotion(config, dataset, evaluation, logger=get_run_logger())


@task(name="export_model", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def export_model(final: phases.PhaseOutcome, run_id: str) -> dict:
    """Stage a TensorFlow SavedModel (for TF Serving) of the final model."""
    return publishing.export_model(final, run_id, logger=get_run_logger())


@task(name="export_formats", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def export_formats(config: RetrainConfig, dataset: DatasetRef, final: phases.PhaseOutcome,
                   run_id: str) -> dict:
    """Stage the ONNX/LiteRT exports of `config.export`, each checked on the test split first."""
    return publishing.export_formats(config, dataset, final, run_id, logger=get_run_logger())


# No retries: a conflict (production moved while this run was deciding) must surface, not be
# papered over by a second attempt that would compare against a different production.
@task(name="promote_model")
def promote_model(config: RetrainConfig, registered: Registration,
                  decision: PromotionDecision) -> Registration:
    """Move production (or candidate) to the new version if the gate blessed it."""
    return publishing.apply_promotion(config, registered, decision, logger=get_run_logger())
