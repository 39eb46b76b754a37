"""Training on the gpu pool: the retrain flow starts the `train/gpu` deployment as a
subflow, waits for it with a timeout, and reads the outcome it left in S3."""

from __future__ import annotations

from prefect import task
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.states import Cancelling

from transferflow import phases
from transferflow.config import RetrainConfig, TrainOn
from transferflow.errors import ConfigError, TrainingError

TRAIN_DEPLOYMENT = "train/gpu"


@task(name="choose_training_target")
def choose_training_target(config: RetrainConfig) -> str:
    """'gpu-pool' or 'local', from config.train_on and whether train/gpu is deployed."""
    logger = get_run_logger()
    deployed = _deployment_exists(TRAIN_DEPLOYMENT)
    if config.train_on == TrainOn.GPU_POOL and not deployed:
        raise ConfigError(f"train_on is gpu-pool but deployment {TRAIN_DEPLOYMENT} does not exist on "
                          "this Prefect server: run `make deploy` (and a gpu worker), or use auto/local")
    target = "gpu-pool" if config.train_on != TrainOn.LOCAL and deployed else "local"
    logger.info("training runs %s (train_on=%s, %s %s)", "on the gpu pool" if target == "gpu-pool"
                else "in this process", config.train_on, TRAIN_DEPLOYMENT,
                "deployed" if deployed else "not deployed")
    return target


def _deployment_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except ObjectNotFound:
            return False


def train_on_gpu_pool(config: RetrainConfig, phase: str, run_id: str, outcome_type, **inputs):
    """Run one training phase as a `train/gpu` subflow; returns its outcome (read from S3)."""
    parameters = {"config": config.model_dump(mode="json"), "phase": phase, "run_id": run_id,
                  **{k: v.model_dump(mode="json") for k, v in inputs.items()}}
    child = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, as_subflow=True,
                           timeout=config.training_timeout_minutes * 60.0, poll_interval=2)
    state = child.state
    if state is None or not state.is_final():
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(child.id, Cancelling(message="retrain timed out waiting"), force=True)
        raise TrainingError(f"{phase} training run {child.name} on the gpu pool did not finish within "
                            f"{config.training_timeout_minutes} minutes; it was cancelled. Raise "
                            "training_timeout_minutes or check that a gpu worker is running.")
    if not state.is_completed():
        raise TrainingError(f"{phase} training run {child.name} on the gpu pool ended {state.name}: "
                            f"{state.message or 'see its logs'}")
    return phases.load_outcome(run_id, phase, outcome_type)
