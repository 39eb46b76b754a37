from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger

from transferflow.config import RetrainConfig, TrainOn
from transferflow.data import DatasetRef
from transferflow.pipeline import phases
from transferflow.training.gate import GateDecision


def epoch_progress(phase: str):
    """A progress artifact in the UI, moved after every epoch."""
    artifact_id = create_progress_artifact(0.0, description=f"{phase} training: epochs done")

    def on_epoch(done: int, total: int) -> None:
        update_progress_artifact(artifact_id, 100.0 * done / total)

    return on_epoch


# No retries on training: a failure there is a bug or bad data, not a blip. The timeout
# keeps a hung accelerator from holding a worker forever (set per run from the config).
@task(name="train_head")
def train_head(config: RetrainConfig, dataset: DatasetRef, backbone: phases.BackboneRef,
               run_id: str) -> phases.PhaseOutcome:
    """Train the new classifier head on the frozen backbone."""
    return phases.train_head(config, dataset, backbone, run_id, logger=get_run_logger(),
                             on_epoch=epoch_progress("head"))


@task(name="decide_fine_tune")
def decide_fine_tune(config: RetrainConfig, dataset: DatasetRef, head: phases.PhaseOutcome) -> GateDecision:
    """The gate: fine-tune only a head clearly better than chance (or clearing fine_tune_gate)."""
    return phases.decide_fine_tune(config, dataset, head, logger=get_run_logger())


@task(name="fine_tune")
def fine_tune(config: RetrainConfig, dataset: DatasetRef, head: phases.PhaseOutcome,
              run_id: str) -> phases.FineTuneOutcome:
    """Unfreeze the top blocks and train at a low learning rate; keep only if not worse."""
    return phases.fine_tune(config, dataset, head, run_id, logger=get_run_logger(),
                            on_epoch=epoch_progress("fine-tune"))


def with_timeout(training_task, config: RetrainConfig):
    """The training task with this run's timeout applied."""
    return training_task.with_options(timeout_seconds=config.training_timeout_minutes * 60.0)


@task(name="store_outcome", retries=2, retry_delay_seconds=[5, 30])
def store_outcome(run_id: str, phase: str, outcome) -> str:
    """Write the phase's outcome to S3 for the parent run (which may be on another worker)."""
    return phases.store_outcome(run_id, phase, outcome)


def run_phase(phase: str, target: TrainOn, config: RetrainConfig, dataset: DatasetRef, run_id: str,
              **inputs):
    """A training phase ("head" needs backbone=, "fine_tune" needs head=), in this process
    (target LOCAL) or as a train/gpu subflow on the gpu pool (target GPU_POOL)."""
    training_task, outcome_type = PHASES[phase]
    if target == TrainOn.GPU_POOL:
        from transferflow_tasks.remote import train_on_gpu_pool

        return train_on_gpu_pool(config, phase, run_id, outcome_type, dataset=dataset, **inputs)
    return with_timeout(training_task, config)(config=config, dataset=dataset, run_id=run_id, **inputs)


PHASES = {"head": (train_head, phases.PhaseOutcome), "fine_tune": (fine_tune, phases.FineTuneOutcome)}
