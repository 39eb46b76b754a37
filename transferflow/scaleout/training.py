"""Training phases on a Ray cluster (engine ray), submitted from the process that runs the phase
(a Prefect task): the counterpart of training.local's train_head and fine_tune.

- Ray Train's `TensorflowTrainer` starts `num_workers` workers (`gpus_per_worker` GPUs each) and
  sets TF_CONFIG; each runs replica.train_loop under MultiWorkerMirroredStrategy. `batch_size` is
  per replica, as with mirrored: one step sees `batch_size x replicas` images (a replica per
  worker on CPUs, per GPU on GPU workers). The learning rate is not scaled.
- Failures: `FailureConfig(max_failures)` (TRANSFERFLOW_RAY_MAX_FAILURES, default 3). When a worker
  dies, Ray Train restarts the group and the phase resumes from its last checkpoint in object
  storage, the one a retried local phase uses; the log says so.
- The trainer runs inside a Ray task that this process waits on while it relays the chief's log
  lines and epoch progress (relay.py). Any exception here while it waits (a Prefect timeout or
  cancellation, Ctrl-C) cancels that task; its Ray Train controller and workers die with it.
- The PhaseOutcome is the local path's, with the cluster's facts (nodes, CPUs, GPUs, workers,
  attempts, seconds) under `ran_on["cluster"]`, so the metadata records where the phase ran.
"""

from __future__ import annotations

import logging
import os
import time

from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, load_prepared
from transferflow.errors import ConfigError, TrainingError, TransferflowError
from transferflow.scaleout import replica
from transferflow.scaleout.cluster import Session, cluster_facts, describe
from transferflow.scaleout.features import head_features_on_ray
from transferflow.scaleout.relay import Forwarder, open_mailbox
from transferflow.training import backbones
from transferflow.training.local import head_features
from transferflow.training.outcomes import (
    BackboneRef,
    FineTuneOutcome,
    PhaseOutcome,
    checkpoint_prefix,
    run_prefix,
)

log = logging.getLogger(__name__)

MAX_FAILURES_ENV = "TRANSFERFLOW_RAY_MAX_FAILURES"
DEFAULT_MAX_FAILURES = 3
POLL_S = 0.5
STOP_WAIT_S = 30.0
# The object store and registry settings the workers need, passed to them from this process (a
# test or a run may point TRANSFERFLOW_BUCKET elsewhere than the cluster's own environment).
# Credentials are not passed: workers take them from their own environment (a local cluster
# inherits this process's; the KubeRay manifest takes them from a Secret).
WORKER_ENV = ("TRANSFERFLOW_BUCKET", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION",
              "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "TRANSFERFLOW_S3_WARMUP_S", "KERAS_BACKEND")


def train_head_on_ray(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef, run_id: str,
                      logger=log, on_epoch=None) -> PhaseOutcome:
    """The head phase on the cluster. On cached features it trains on one worker: the backbone's
    work (the features) is already spread over the cluster, and what is left is a dense layer, a
    fraction of a second per epoch, which an all-reduce per step across workers would only slow."""
    settings = _settings(config, dataset, run_id, "head", backbone=backbone.model_dump(mode="json"))
    if config.cache_features and not config.augment:
        settings.update(_stored_features(config, dataset, backbone, logger))
        return run_phase(replica.HEAD_ON_FEATURES, settings, config, 1, logger, on_epoch)
    if config.cache_features:
        logger.info("augmentation is on, so every epoch sees new images: features are not cached and the "
                    "head trains end to end on %d workers", config.num_workers)
    return run_phase(replica.HEAD, settings, config, config.num_workers, logger, on_epoch)


def fine_tune_on_ray(config: RetrainConfig, dataset: DatasetRef, head: PhaseOutcome, run_id: str,
                     logger=log, on_epoch=None) -> FineTuneOutcome:
    """The fine-tuning phase on `num_workers` workers; kept only if val did not drop, as locally."""
    from transferflow.training.gate import keep_fine_tuned

    settings = _settings(config, dataset, run_id, "fine_tune", head=head.model_dump(mode="json"))
    tuned = run_phase(replica.FINE_TUNE, settings, config, config.num_workers, logger, on_epoch)
    kept = keep_fine_tuned(head.metrics["val_accuracy"], tuned.metrics["val_accuracy"])
    logger.info(kept.reason)
    return FineTuneOutcome(tuned=tuned, kept=kept, chosen=tuned if kept.passed else head)


def _settings(config: RetrainConfig, dataset: DatasetRef, run_id: str, phase: str, **inputs) -> dict:
    """What every worker gets: the config and inputs as JSON, and the run's S3 locations, fixed here
    so that workers with another TRANSFERFLOW_BUCKET still write where this run reads."""
    return {"config": config.model_dump(mode="json"), "dataset": dataset.model_dump(mode="json"),
            "outcome_phase": phase, "checkpoint_uri": checkpoint_prefix(run_id, phase),
            "model_uri": f"{run_prefix(run_id)}/{phase}.keras", **inputs}


def _stored_features(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef, logger) -> dict:
    """Make sure the head's features are in the feature store (training.local.head_features: reused, or
    computed on the cluster by scaleout.features), so that the head's worker finds them there."""
    import keras

    from transferflow.training import model as modeling
    from transferflow.training.compute import compute_scope, plan_compute

    spec = backbones.get_spec(backbone.name)
    plan = plan_compute(config.mixed_precision, config.xla, config.strategy)
    with compute_scope(plan):
        keras.utils.set_random_seed(config.seed)  # the worker builds the same backbone from the seed
        base = backbones.construct(spec, dataset.image_size, backbones.resolve_weights(config.weights))
        classifier = modeling.build_classifier(base, spec, len(dataset.class_names), config.dropout)
        _, info = head_features(config, dataset, backbone, classifier, load_prepared(dataset), plan, logger,
                                compute=head_features_on_ray)
    return {"features": info, "precision": plan.precision}


def run_phase(phase: str, settings: dict, config: RetrainConfig, workers: int, logger=log,
              on_epoch=None) -> PhaseOutcome:
    """Run one phase under TensorflowTrainer on `workers` workers; its outcome, with the facts."""
    replicas = workers * max(1, int(config.gpus_per_worker))  # one per worker, or per whole GPU
    with Session(logger) as session:
        ray = session.connect()
        facts, limit = cluster_facts(), max_failures()
        logger.info("%s on Ray: %d worker%s (%g GPUs each) on %s; global batch %d = %d per replica x %d; "
                    "up to %d worker failures resume from the last checkpoint", settings["outcome_phase"],
                    workers, "s" * (workers > 1), config.gpus_per_worker, describe(facts),
                    config.batch_size * replicas, config.batch_size, replicas, limit)
        _warn_if_too_small(facts, workers, config.gpus_per_worker, settings["outcome_phase"], logger)
        mailbox = open_mailbox()
        forwarder = Forwarder(logger, settings["outcome_phase"], limit, on_epoch)
        started = time.monotonic()
        try:
            job = ray.remote(_fit).options(num_cpus=0, max_retries=0, runtime_env=_task_env(ray)).remote(
                {**settings, "phase": phase, "mailbox": mailbox}, workers, config.gpus_per_worker, limit,
                worker_env())
            _follow(ray, job, mailbox, forwarder, settings["outcome_phase"])
        finally:
            ray.kill(mailbox)
    facts.update(workers=workers, gpus_per_worker=config.gpus_per_worker, attempts=forwarder.attempts,
                 seconds=round(time.monotonic() - started, 2),
                 hosts=sorted({worker["host"] for worker in forwarder.workers.values()}))
    outcome = PhaseOutcome.model_validate(forwarder.outcome)
    outcome.ran_on["cluster"] = facts
    return outcome


def _warn_if_too_small(facts: dict, workers: int, gpus_per_worker: float, phase: str, logger) -> None:
    """Ray Train waits for the resources its workers ask for (1 CPU each, and their GPUs): say so
    when the cluster does not have them now, rather than let the phase wait in silence."""
    if workers <= facts["cpus"] and workers * gpus_per_worker <= facts["gpus"]:
        return
    logger.warning("%s on Ray: %d workers ask for %d CPUs and %g GPUs; the cluster has %d and %d now. "
                   "Training waits until it grows (an autoscaling cluster); else lower num_workers or "
                   "gpus_per_worker", phase, workers, workers, workers * gpus_per_worker, facts["cpus"],
                   facts["gpus"])


def _follow(ray, job, mailbox, forwarder: Forwarder, phase: str) -> None:
    """Relay the phase's messages until it ends; stop it on any exception (timeout, cancellation)."""
    try:
        while True:
            done, _ = ray.wait([job], timeout=POLL_S)
            forwarder.pump(mailbox)
            if forwarder.error is not None:
                raise forwarder.error
            if done:
                break
        ray.get(job)
    except BaseException as exc:
        stop(ray, job, phase, exc, forwarder.logger)
        if isinstance(exc, ray.exceptions.RayError):
            raise _failure(phase, exc) from exc
        raise  # the chief's transferflow error, or what interrupted this process
    if forwarder.outcome is None:
        raise TrainingError(f"{phase} on Ray ended without an outcome from its chief worker: see the "
                            "Ray worker logs (ray logs, or the dashboard)")


def stop(ray, job, phase: str, why: BaseException, logger) -> None:
    """Stop the Ray Train run and wait until it has stopped. First as Ctrl-C would: cancelling the
    task raises KeyboardInterrupt in it, and Ray Train aborts the run (workers stopped, their
    reserved resources freed). If that has not ended it in time, the task's process is killed; the
    controller and workers it owns die with it."""
    done, _ = ray.wait([job], timeout=0)
    if done:
        return
    logger.warning("%s on Ray: stopping its Ray Train run (%s)", phase, type(why).__name__)
    ray.cancel(job)
    done, _ = ray.wait([job], timeout=STOP_WAIT_S)
    if not done:
        logger.warning("%s on Ray: the run did not stop within %.0fs: killing it", phase, STOP_WAIT_S)
        ray.cancel(job, force=True)
        ray.wait([job], timeout=STOP_WAIT_S)


def _failure(phase: str, exc: Exception) -> TransferflowError:
    """The error a worker raised, when it is transferflow's; else a TrainingError saying what failed.
    (Ray wraps the trainer's WorkerGroupError, which holds each failed worker's error.)"""
    from transferflow.scaleout.cluster import task_error

    cause = getattr(exc, "cause", None) or exc
    failures = sorted((getattr(cause, "worker_failures", None) or {}).items())
    for _, error in failures:
        if isinstance(found := task_error(error), TransferflowError):
            return found
    detail = "; ".join(f"worker {rank}: {error}" for rank, error in failures) or str(cause)
    return TrainingError(f"{phase} on Ray failed, after up to {max_failures()} restarts of its workers "
                         f"({MAX_FAILURES_ENV}): {detail[:2000]}. The Ray worker logs have the details")


def max_failures() -> int:
    """How many times Ray Train restarts a failed worker group before the phase fails."""
    value = os.environ.get(MAX_FAILURES_ENV, str(DEFAULT_MAX_FAILURES))
    if not value.strip().isdigit():
        raise ConfigError(f"{MAX_FAILURES_ENV}={value!r} is not a whole number: set it to 0 (no restarts) "
                          f"or more, or unset it for {DEFAULT_MAX_FAILURES}")
    return int(value)


def worker_env() -> dict[str, str]:
    """The settings of WORKER_ENV that are set here, for the workers' runtime environment."""
    return {name: os.environ[name] for name in WORKER_ENV if os.environ.get(name)}


def _task_env(ray) -> dict:
    """The trainer's task (and the Ray Train controller it starts) find this cluster by its address:
    Ray Train's placement-group cleaner looks the controller up through the state API, which
    otherwise guesses the address and, with several local clusters on one machine, guesses wrong
    (it then waits out a 10 s timeout at the end of every phase)."""
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception as exc:  # a Ray Client connection (ray://) does not know it: let Ray guess
        log.debug("no GCS address to pass to the trainer's task (%s)", exc)
        return {}
    return {"env_vars": {"RAY_ADDRESS": address}}


def _fit(settings: dict, workers: int, gpus_per_worker: float, failures: int, env: dict) -> None:
    """Runs on the cluster, as a Ray task: build the trainer and run it to the end."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    resources = {"CPU": 1, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TensorflowTrainer(
        replica.train_loop, train_loop_config=settings,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=f"transferflow-{settings['phase']}-{time.strftime('%Y%m%d-%H%M%S')}",
                             failure_config=FailureConfig(max_failures=failures),
                             worker_runtime_env={"env_vars": env}))
    trainer.fit()

