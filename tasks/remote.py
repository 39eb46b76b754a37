"""Training on the gpu pool: the retrain flow starts the `train/gpu` deployment as a
subflow, waits for it with a timeout, and reads the outcome it left in S3."""

from __future__ import annotations

import time

from prefect import task
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Cancelling

from transferflow.config import RetrainConfig, TrainOn
from transferflow.errors import ConfigError, TrainingError
from transferflow.pipeline import phases

TRAIN_DEPLOYMENT = "train/gpu"
POLL_S = 2.0
CHILD_GRACE_S = 300.0  # the child's own task timeout fires first; this covers saving and upload


@task(name="choose_training_target")
def choose_training_target(config: RetrainConfig) -> TrainOn:
    """GPU_POOL or LOCAL, from config.train_on and whether train/gpu is deployed. With engine ray the
    phases run on the Ray cluster: this process submits them and follows them (LOCAL)."""
    logger = get_run_logger()
    if config.engine == "ray":
        (logger.warning if config.train_on == TrainOn.GPU_POOL else logger.info)(
            "training runs on the Ray cluster, submitted from this process (engine ray; train_on=%s "
            "does not apply)", config.train_on)
        return TrainOn.LOCAL
    deployed = _deployment_exists(TRAIN_DEPLOYMENT)
    if config.train_on == TrainOn.GPU_POOL and not deployed:
        raise ConfigError(f"train_on is gpu-pool but deployment {TRAIN_DEPLOYMENT} does not exist on "
                          "this Prefect server: run `make deploy` (and a gpu worker), or use auto/local")
    target = TrainOn.GPU_POOL if config.train_on != TrainOn.LOCAL and deployed else TrainOn.LOCAL
    logger.info("training runs %s (train_on=%s, %s %s)", "on the gpu pool" if target == TrainOn.GPU_POOL
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
    """Run one training phase as a `train/gpu` subflow; returns its outcome (read from S3).

    The timeout covers waiting for a gpu worker and, separately, the training itself,
    so a busy queue does not eat into a run's training time.
    """
    parameters = {"config": config.model_dump(mode="json"), "phase": phase, "run_id": run_id,
                  **{k: v.model_dump(mode="json") for k, v in inputs.items()}}
    child = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, as_subflow=True, timeout=0)
    run = _wait_for_child(child.id, config.training_timeout_minutes * 60.0, get_run_logger())
    if not run.state.is_completed():
        raise TrainingError(f"{phase} training run {run.name} on the gpu pool ended {run.state.name}: "
                            f"{run.state.message or 'see its logs'}")
    return phases.load_outcome(run_id, phase, outcome_type)


def _wait_for_child(child_id, limit_s: float, logger):
    queued_at, started_at, last_note = time.monotonic(), None, 0.0
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(child_id)
            if run.state.is_final():
                return run
            now = time.monotonic()
            if started_at is None and run.state.is_running():
                started_at = now
            if started_at is None and now - queued_at > limit_s:
                _cancel(client, run, "no gpu worker picked it up in time")
                raise TrainingError(f"no gpu worker picked up {run.name} within {limit_s / 60:.0f} "
                                    "minutes; it was cancelled. Start one with `make worker-gpu`.")
            if started_at is not None and now - started_at > limit_s + CHILD_GRACE_S:
                _cancel(client, run, "retrain stopped waiting for it")
                raise TrainingError(f"{run.name} on the gpu pool ran past training_timeout_minutes "
                                    f"({limit_s / 60:.0f}); it was cancelled.")
            if started_at is None and now - last_note >= 60:
                logger.info("waiting for a gpu worker to pick up %s (%s)", run.name, run.state.name)
                last_note = now
            time.sleep(POLL_S)


def _cancel(client, run, why: str) -> None:
    """Cancel a child run; one that never started is simply marked Cancelled."""
    never_started = run.state.is_scheduled() or run.state.is_pending()
    state = Cancelled(message=why) if never_started else Cancelling(message=why)
    client.set_flow_run_state(run.id, state)
