"""One Ray Train worker of a training phase (engine ray): what `TensorflowTrainer` runs on every
worker, the counterpart of training.local's train_head / fine_tune in this process.

Every worker builds the same model under MultiWorkerMirroredStrategy, resumes from the same S3
checkpoint and trains on its slice of each global batch. Only the chief (world rank 0) writes:
the checkpoints, the staged model, the log lines and the outcome. The others run every save as
the chief does but into a scratch folder they discard, as MultiWorkerMirroredStrategy requires.

A transferflow error on the chief (a diverged loss, bad data) would be the same on a retry: the
chief sends it to the submitting process, which stops the run at once and raises it, so Ray's
FailureConfig restarts the group for workers that died, never for training math.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from pathlib import Path

from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, load_prepared
from transferflow.errors import TransferflowError
from transferflow.scaleout.features import head_features_on_ray
from transferflow.scaleout.relay import FAILED, OUTCOME, WorkerRelay
from transferflow.training import backbones
from transferflow.training.local import fit_options, head_features
from transferflow.training.outcomes import BackboneRef, PhaseOutcome, runtime_info

log = logging.getLogger(__name__)

HEAD, HEAD_ON_FEATURES, FINE_TUNE = "head", "head_on_features", "fine_tune"


def train_loop(settings: dict) -> None:
    """The per-worker function of every training phase on Ray (`settings`: training._settings, plus
    the phase, the mailbox and, for the head on features, their precision and origin)."""
    import ray.train

    from transferflow.scaleout.multiworker import multi_worker_strategy, strategy_scope, worker_plan

    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    relay = WorkerRelay(settings["mailbox"], rank, settings["phase"])
    relay.started(workers)
    config = RetrainConfig.model_validate(settings["config"]).model_copy(update={"engine": "local"})
    strategy = multi_worker_strategy(0 < config.gpus_per_worker < 1)  # before TensorFlow runs anything
    plan = worker_plan(config.mixed_precision, config.xla, strategy, workers)
    if settings.get("precision"):  # the head on stored features: the precision they were computed in
        plan = dataclasses.replace(plan, precision=settings["precision"])
    relay.logger.info("compute: %s", plan.describe(config.batch_size))
    scope = functools.partial(strategy_scope, plan, strategy)
    try:
        model, metrics = PHASES[settings["phase"]](config, settings, plan, relay, scope)
        outcome = stage(model, settings, metrics, plan, chief=rank == 0)
    except TransferflowError as exc:
        if rank == 0:
            relay.send(FAILED, exc)
        raise
    if rank == 0:
        relay.send(OUTCOME, outcome.model_dump(mode="json"))


def _options(config: RetrainConfig, plan, data, relay: WorkerRelay, epochs: int, learning_rate: float,
             settings: dict) -> dict:
    """fit_phase's options as the local path sets them, with only the chief logging, reporting
    progress and writing checkpoints to object storage."""
    on_epoch = relay.on_epoch if relay.rank == 0 else None
    options = fit_options(config, plan, data, relay.logger, on_epoch, epochs, learning_rate,
                          settings["checkpoint_uri"])
    # every epoch: all workers must take the same saves (reading variables is a collective), and
    # each worker's clock would decide on its own; uploaded before training goes on, so that a
    # replaced worker group finds every epoch's checkpoint but the last complete
    return {**options, "checkpoint_scratch": relay.rank != 0, "checkpoint_interval_s": 0.0,
            "checkpoint_background": False}


def _classifier(config: RetrainConfig, backbone: BackboneRef, dataset: DatasetRef):
    """The classifier with a frozen backbone, initialised from the run's seed on every worker."""
    import keras

    from transferflow.training import model as modeling

    spec = backbones.get_spec(backbone.name)
    keras.utils.set_random_seed(config.seed)
    base = backbones.construct(spec, dataset.image_size, backbones.resolve_weights(config.weights))
    return modeling.build_classifier(base, spec, len(dataset.class_names), config.dropout,
                                     augment=config.augment)


def train_head(config: RetrainConfig, settings: dict, plan, relay: WorkerRelay, scope):
    """The head, end to end through the frozen backbone (augmentation on, or features not cached)."""
    from transferflow.training.fit import fit_phase
    from transferflow.training.local import standardize_features

    dataset = DatasetRef.model_validate(settings["dataset"])
    data = load_prepared(dataset)
    with scope():
        classifier = _classifier(config, BackboneRef.model_validate(settings["backbone"]), dataset)
        options = _options(config, plan, data, relay, config.head_epochs, config.head_learning_rate, settings)
        standardize_features(classifier, data.splits["train"], options["batch_size"], relay.logger)
        metrics = fit_phase(classifier, "head", data.splits["train"], data.splits["val"], **options)
    return classifier, metrics.as_dict()


def train_head_on_features(config: RetrainConfig, settings: dict, plan, relay: WorkerRelay, scope):
    """The head on the backbone features the submitting process stored (one worker: see
    training.head_workers)."""
    from transferflow.training.fit import fit_head_on_features

    dataset = DatasetRef.model_validate(settings["dataset"])
    backbone = BackboneRef.model_validate(settings["backbone"])
    data = load_prepared(dataset)
    with scope():
        classifier = _classifier(config, backbone, dataset)
        features, _ = head_features(config, dataset, backbone, classifier, data, plan, relay.logger,
                                    compute=head_features_on_ray)
        options = _options(config, plan, data, relay, config.head_epochs, config.head_learning_rate, settings)
        metrics = fit_head_on_features(classifier, data.splits["train"], data.splits["val"],
                                       features=features, **options)
    return classifier, metrics.as_dict() | {"features": settings["features"]}


def fine_tune(config: RetrainConfig, settings: dict, plan, relay: WorkerRelay, scope):
    """Unfreeze the top blocks of the trained head's model and train at a low rate."""
    from transferflow.training import model as modeling
    from transferflow.training.fit import fit_phase

    spec = backbones.get_spec(config.backbone)
    trained_head = modeling.load_from(PhaseOutcome.model_validate(settings["head"]).model_uri)
    data = load_prepared(DatasetRef.model_validate(settings["dataset"]))
    with scope():
        classifier = modeling.rebuild_classifier(trained_head)
        unfrozen = modeling.unfreeze_top_blocks(classifier, spec, config.fine_tune_blocks)
        relay.logger.info("fine-tuning %d layers of %s (top %s blocks) at learning rate %g, %s schedule",
                          len(unfrozen), spec.name, config.fine_tune_blocks, config.fine_tune_learning_rate,
                          config.fine_tune_schedule)
        options = _options(config, plan, data, relay, config.fine_tune_epochs,
                           config.fine_tune_learning_rate, settings)
        metrics = fit_phase(classifier, "fine_tune", data.splits["train"], data.splits["val"],
                            schedule=config.fine_tune_schedule, **options)
    return classifier, metrics.as_dict() | {"unfrozen_layers": unfrozen}


PHASES = {HEAD: train_head, HEAD_ON_FEATURES: train_head_on_features, FINE_TUNE: fine_tune}


def stage(classifier, settings: dict, metrics: dict, plan, chief: bool) -> PhaseOutcome | None:
    """The chief saves the model (float32, so it serves anywhere) to the run's prefix; the others
    save theirs to a scratch file and discard it, so that every worker reads the variables alike."""
    from transferflow.training import model as modeling
    from transferflow.training.compute import FLOAT32

    if plan.precision != FLOAT32:
        classifier = modeling.rebuild_classifier(classifier, FLOAT32)
    if not chief:
        with tempfile.TemporaryDirectory(prefix="transferflow-scratch-") as scratch:
            classifier.save(Path(scratch) / "model.keras")
        return None
    sha, size = modeling.save_to(classifier, settings["model_uri"])
    return PhaseOutcome(phase=settings["outcome_phase"], model_uri=settings["model_uri"], sha256=sha,
                        size=size, metrics={**metrics, "compute": plan.as_dict()}, ran_on=runtime_info())
