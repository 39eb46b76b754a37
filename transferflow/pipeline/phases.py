"""The pipeline's stages as plain functions. Prefect tasks in tasks/ wrap these;
they can also be called directly (tests, notebooks, other orchestrators).

Big things travel as s3:// URIs; what these functions return is small.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time

from pydantic import BaseModel

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, PrepareOptions, check_leakage, load_prepared, prepare_dataset
from transferflow.training import backbones
from transferflow.training.compute import FLOAT32, ComputePlan, compute_scope, plan_compute
from transferflow.training.gate import GateDecision, fine_tune_gate, keep_fine_tuned

log = logging.getLogger(__name__)


class BackboneRef(BaseModel):
    """A backbone whose weights were found and checked to fit."""

    name: str
    weights: str  # imagenet | none | the URI given
    weights_sha256: str | None
    image_size: int
    parameters: int
    preprocessing: str  # keras.applications.<module>.preprocess_input


class PhaseOutcome(BaseModel):
    """A trained model staged in object storage, and how it did."""

    phase: str
    model_uri: str
    sha256: str
    size: int
    metrics: dict
    ran_on: dict = {}  # host, visible accelerators, CUDA_VISIBLE_DEVICES


class FineTuneOutcome(BaseModel):
    tuned: PhaseOutcome
    kept: GateDecision
    chosen: PhaseOutcome  # the tuned model if kept, else the head


def run_prefix(run_id: str, bucket: str | None = None) -> str:
    """Where a run stages its intermediate models: s3://<bucket>/runs/<run_id>."""
    return f"s3://{bucket or storage.bucket_name()}/runs/{run_id}"


def checkpoint_prefix(run_id: str, phase: str) -> str:
    """Where a phase's checkpoints go: under the run's prefix, removed after registration."""
    return f"{run_prefix(run_id)}/checkpoints/{phase}"


def check_storage() -> str:
    """Fail fast, before any download or training, if object storage is unusable."""
    bucket = storage.ensure_bucket()
    aborted = storage.abort_stale_uploads(bucket)
    if aborted:
        log.info("aborted %d multipart uploads left unfinished by earlier runs", aborted)
    return f"s3://{bucket} at {storage.endpoint_label()}"


def download_dataset(config: RetrainConfig, logger=log) -> DatasetRef:
    """Prepare the dataset (or find it prepared), then refuse it, before any training, when too
    many test images duplicate training images, or when the model's golden set has a class the
    dataset lacks. The check runs on a stored copy too, so a later
    run with another max_leakage decides afresh."""
    from transferflow.judging.evaluation import check_golden_classes

    if config.engine == "ray":
        from transferflow.scaleout.prepare import prepare_on_ray

        ref = prepare_on_ray(config.dataset, prepare_options(config), config.num_workers, logger=logger)
    else:
        ref = prepare_dataset(config.dataset, prepare_options(config), logger=logger)
    check_leakage(ref.leakage, config.max_leakage, ref.source, logger)
    check_golden_classes(config.registry_name, ref)
    if config.init_from:
        from transferflow.training.warmstart import check_init_classes

        check_init_classes(config, ref.class_names, ref.image_size)
    return ref


def prepare_options(config: RetrainConfig) -> PrepareOptions:
    """The dataset stage's options; image_size "auto" is bounded by the backbone's sizes (from the one
    its last block sees a 2x2 map at, to its native one). Engine ray always writes the streamed format
    (threshold 0), so the cache key says so too."""
    spec = backbones.get_spec(config.backbone)
    threshold = 0 if config.engine == "ray" else config.stream_threshold_mb
    return PrepareOptions(config.image_size, config.val_fraction, config.test_fraction, config.seed,
                          config.max_bad_image_fraction, threshold,
                          auto_bounds=spec.auto_bounds(), extra_data=config.extra_data)


def dataset_cache_key(config: RetrainConfig) -> str | None:
    """What an orchestrator may cache the dataset stage under: the source's signature, the
    preparation options and the store (its endpoint, bucket and id, so a wiped store is not
    taken for the one the cached result points into). None when the source cannot be
    identified cheaply. max_leakage is in it: a result cached under a looser limit must not let a
    stricter run through without its check."""
    from transferflow.data import PREPARED_FORMAT, source_signature

    signature = source_signature(config.dataset)
    extra = source_signature(config.extra_data) if config.extra_data else ""
    if signature is None or extra is None:
        return None
    options = prepare_options(config)
    parts = [signature, extra, options.image_size, options.auto_bounds, options.val_fraction,
             options.test_fraction, options.seed, options.max_bad_fraction, options.stream_threshold_mb,
             PREPARED_FORMAT, config.max_leakage, storage.endpoint_label(), storage.bucket_name(),
             storage.store_id(storage.bucket_name())]
    return "dataset-" + hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


def build_backbone(config: RetrainConfig, dataset: DatasetRef | None = None, logger=log) -> BackboneRef:
    """Resolve the weights and build the backbone once, so a mismatch fails before training.

    At the prepared dataset's image size; without one, at config.image_size (its minimum for auto).
    """
    spec = backbones.get_spec(config.backbone)
    weights_file = backbones.resolve_weights(config.weights)
    size = dataset.image_size if dataset else (spec.auto_bounds()[0] if config.image_size == "auto"
                                               else config.image_size)
    model = backbones.construct(spec, size, weights_file)
    sha = storage.sha256_file(weights_file) if weights_file not in (None, "imagenet") else None
    logger.info("backbone %s (%s weights): %d parameters, output %s", spec.name, config.weights,
                model.count_params(), tuple(model.output_shape[1:]))
    return BackboneRef(name=spec.name, weights=config.weights, weights_sha256=sha,
                       image_size=size, parameters=int(model.count_params()),
                       preprocessing=f"keras.applications.{spec.preprocess_module}.preprocess_input")


def train_head(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef, run_id: str,
               logger=log, on_epoch=None) -> PhaseOutcome:
    """Train a new head on the frozen backbone and stage the model (engine ray: on the cluster)."""
    if config.engine == "ray":
        from transferflow.scaleout.training import train_head_on_ray

        return train_head_on_ray(config, dataset, backbone, run_id, logger, on_epoch)
    import keras

    from transferflow.training import model as modeling
    from transferflow.training.fit import fit_head_on_features, fit_phase

    spec = backbones.get_spec(backbone.name)
    weights_file = backbones.resolve_weights(config.weights)
    data = load_prepared(dataset)
    plan = plan_for(config, logger)
    extra = {}
    with compute_scope(plan):
        keras.utils.set_random_seed(config.seed)  # so that weights "none" are reproducible
        base = backbones.construct(spec, dataset.image_size, weights_file)
        classifier = modeling.build_classifier(base, spec, len(dataset.class_names), config.dropout,
                                               augment=config.augment)
        if config.init_from:
            from transferflow.training.warmstart import warm_start

            warm_start(classifier, config.init_from, dataset.class_names, logger)
        options = _fit_options(config, plan, data, logger, on_epoch, config.head_epochs,
                               config.head_learning_rate, checkpoint_prefix(run_id, "head"))
        if config.cache_features and not config.augment:
            features, extra["features"] = head_features(config, dataset, backbone, classifier, data, plan,
                                                        logger)
            metrics = fit_head_on_features(classifier, data.splits["train"], data.splits["val"],
                                           features=features, **options)
        else:
            if config.cache_features:
                logger.info("augmentation is on, so every epoch sees new images: features are not "
                            "cached and the head trains end to end")
            standardize_features(classifier, data.splits["train"], options["batch_size"], logger)
            metrics = fit_phase(classifier, "head", data.splits["train"], data.splits["val"], **options)
    outcome = _stage(classifier, "head", config, run_id, metrics.as_dict() | extra, plan)
    from transferflow.training.activations import settle

    settle()  # the activations' upload overlapped the head's training; it ends with the phase
    return outcome


def standardize_features(classifier, train, batch_size: int, logger=log) -> None:
    """Set the standardize layer from one pass of the frozen backbone over the (unaugmented)
    training images: the end-to-end head needs the statistics the cached path gets for free."""
    from transferflow.training.fit import extract_features
    from transferflow.training.model import STANDARDIZE_LAYER

    started = time.monotonic()
    features = extract_features(classifier, {"train": train}, batch_size)["train"]
    classifier.get_layer(STANDARDIZE_LAYER).adapt_to(features)
    logger.info("feature statistics measured on %d training images (%.1fs)", len(features),
                time.monotonic() - started)


def fine_tune(config: RetrainConfig, dataset: DatasetRef, head: PhaseOutcome, run_id: str,
              logger=log, on_epoch=None) -> FineTuneOutcome:
    """Unfreeze the top blocks, train at a low rate, keep the result only if val did not drop
    (engine ray: on the cluster). Above a frozen bottom, on its cached activations when it can."""
    if config.engine == "ray":
        from transferflow.scaleout.training import fine_tune_on_ray

        return fine_tune_on_ray(config, dataset, head, run_id, logger, on_epoch)
    from transferflow.training import activations
    from transferflow.training import model as modeling
    from transferflow.training.fit import fit_phase

    spec = backbones.get_spec(config.backbone)
    trained_head = modeling.load_from(head.model_uri)
    data = load_prepared(dataset)
    plan = plan_for(config, logger)
    extra = {}
    with compute_scope(plan):
        classifier = modeling.rebuild_classifier(trained_head)
        unfrozen = modeling.unfreeze_top_blocks(classifier, spec, config.fine_tune_blocks)
        logger.info("fine-tuning %d layers of %s (top %s blocks) at learning rate %g, %s schedule",
                    len(unfrozen), spec.name, config.fine_tune_blocks, config.fine_tune_learning_rate,
                    config.fine_tune_schedule)
        options = _fit_options(config, plan, data, logger, on_epoch, config.fine_tune_epochs,
                               config.fine_tune_learning_rate, checkpoint_prefix(run_id, "fine_tune"))
        cut, why = activations.wanted_cut(config, classifier, spec)
        logger.info("fine-tuning input: %s", why)
        if cut is None:
            metrics = fit_phase(classifier, "fine_tune", data.splits["train"], data.splits["val"],
                                schedule=config.fine_tune_schedule, **options)
        else:
            models = activations.split_classifier(classifier, cut)
            key = activations.ActivationKey(feature_key(config, dataset, plan), models.cut)
            memory = activations.in_memory(dataset.counts, models.shape, config.stream_threshold_mb)
            cached, upload = activations.for_fine_tune(key, models, data, options["batch_size"], memory,
                                                       logger)
            # the top shares the classifier's layers: training it trains the classifier
            metrics = fit_phase(models.top, "fine_tune", cached.train, cached.val,
                                schedule=config.fine_tune_schedule, **options)
            if upload is not None:
                upload.result()  # stored while the top trained
            extra["activations"] = cached.info()
    tuned = _stage(classifier, "fine_tune", config, run_id, metrics.as_dict() | extra, plan)
    tuned.metrics["unfrozen_layers"] = unfrozen
    kept = keep_fine_tuned(head.metrics["val_accuracy"], tuned.metrics["val_accuracy"])
    logger.info(kept.reason)
    return FineTuneOutcome(tuned=tuned, kept=kept, chosen=tuned if kept.passed else head)


def decide_fine_tune(config: RetrainConfig, dataset: DatasetRef, head: PhaseOutcome,
                     logger=log) -> GateDecision:
    """The fine-tuning gate on the head's validation accuracy, logged (a warning when it refuses
    fine-tuning that was asked for, or when the head had not converged)."""
    decision = fine_tune_gate(head.metrics["val_accuracy"], config.fine_tune_gate, config.fine_tune_epochs,
                              val_counts=list(dataset.counts.get("val", {}).values()),
                              history=head.metrics.get("history", {}), max_epochs=config.head_epochs)
    quiet = decision.passed and decision.head_converged is not False or config.fine_tune_epochs == 0
    (logger.info if quiet else logger.warning)("gate: %s", decision.reason)
    return decision


def plan_for(config: RetrainConfig, logger=log) -> ComputePlan:
    """The precision, XLA and strategy this worker will use, logged with the reasons."""
    plan = plan_compute(config.mixed_precision, config.xla, config.strategy)
    logger.info("compute: %s", plan.describe(config.batch_size))
    return plan


def _fit_options(config: RetrainConfig, plan: ComputePlan, data, logger, on_epoch, epochs: int,
                 learning_rate: float, checkpoint_uri: str | None = None) -> dict:
    from transferflow.training.fit import balanced_class_weights, split_labels

    class_weight = None
    if config.balance_classes:
        class_weight = balanced_class_weights(split_labels(data.splits["train"]), len(data.class_names))
        logger.info("class weights (inverse frequency): %s",
                    {data.class_names[c]: round(w, 3) for c, w in class_weight.items()})
    return dict(epochs=epochs, learning_rate=learning_rate, batch_size=plan.global_batch(config.batch_size),
                patience=config.patience, seed=config.seed, logger=logger, on_epoch=on_epoch,
                class_weight=class_weight, jit_compile=plan.jit_compile, checkpoint_uri=checkpoint_uri,
                checkpoint_every_steps=config.checkpoint_every_steps, checkpoint_keep=config.checkpoint_keep,
                checkpoint_interval_s=config.checkpoint_interval_s)


def feature_key(config: RetrainConfig, dataset: DatasetRef, plan: ComputePlan,
                weights_sha256: str | None = None):
    """What the backbone's features (and activations) of this dataset are keyed by in object storage."""
    import keras

    from transferflow.training.features import FeatureKey, weights_identity

    if weights_sha256 is None and config.weights not in ("imagenet", "none"):
        weights_sha256 = storage.sha256_file(backbones.resolve_weights(config.weights))
    return FeatureKey(dataset_uri=dataset.uri, dataset_fingerprint=dataset.fingerprint,
                      backbone=config.backbone, image_size=dataset.image_size, precision=plan.precision,
                      weights=weights_identity(config.weights, weights_sha256, config.seed)
                      + (f"+init:{config.init_from}" if config.init_from else ""),  # a pinned NAME:VERSION
                      keras=keras.__version__)


def head_features(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef, classifier, data,
                  plan: ComputePlan, logger=log) -> tuple[dict, dict]:
    """The backbone's pooled features for train and val: from object storage when an earlier run
    computed them for the same dataset, backbone, weights and image size, else computed and stored
    (with, in the same pass, the frozen bottom's activations that fine-tuning will train on)."""
    from transferflow.training.features import load_features, save_features

    key = feature_key(config, dataset, plan, backbone.weights_sha256)
    stored = load_features(key)
    if stored is not None and {"train", "val"} <= set(stored):
        logger.info("reusing backbone features from %s (same dataset, backbone, weights and size)",
                    key.uri())
        return stored, {"source": "reused", "uri": key.uri()}
    started, info = time.monotonic(), {}
    if config.engine == "ray":  # the same features, keys and store; the backbone runs on every worker
        from transferflow.scaleout.features import extract_on_ray

        features, info["ray"] = extract_on_ray(classifier, dataset, ("train", "val"),
                                               plan.global_batch(config.batch_size), config.num_workers,
                                               config.gpus_per_worker, logger)
    else:
        features, activations = _local_features(config, dataset, key, classifier, data, plan, logger)
        info.update({"activations": activations} if activations else {})
    uri = save_features(key, features)
    seconds = time.monotonic() - started
    logger.info("backbone features computed once for %d train + %d val images (%.1fs), stored at %s; "
                "training the head on them", len(features["train"]), len(features["val"]), seconds, uri)
    return features, {"source": "computed", "uri": uri, "seconds": round(seconds, 2), **info}


def _local_features(config: RetrainConfig, dataset: DatasetRef, key, classifier, data, plan: ComputePlan,
                    logger) -> tuple[dict, dict | None]:
    """Pooled features; when fine-tuning will train above a frozen bottom whose activations are not
    stored yet, those too, from the same pass (the bottom is the larger part of the backbone's work)."""
    from transferflow.training import activations
    from transferflow.training.fit import extract_features

    splits = {name: data.splits[name] for name in ("train", "val")}
    batch = plan.global_batch(config.batch_size)
    cut, _ = activations.wanted_cut(config, classifier, backbones.get_spec(config.backbone))
    if cut is not None:
        activation_key = activations.ActivationKey(key, activations.cut_layer(cut))
        if activations.stored_manifest(activation_key) is None:
            models = activations.split_classifier(classifier, cut)
            memory = activations.in_memory(dataset.counts, models.shape, config.stream_threshold_mb)
            features, cached, _ = activations.compute(activation_key, models, splits, batch, memory, logger,
                                                      hand=True)
            logger.info("the activations of %s for fine-tuning came from the same pass (%s, %s), stored "
                        "at %s", models.cut, cached.dtype, "in memory" if memory else "streamed", cached.uri)
            return features, cached.info()
    return extract_features(classifier, splits, batch), None


def _stage(classifier, phase: str, config: RetrainConfig, run_id: str, metrics: dict,
           plan: ComputePlan) -> PhaseOutcome:
    """Save the phase's model under the run's prefix, always as float32 so it serves anywhere."""
    from transferflow.training import model as modeling

    if plan.precision != FLOAT32:
        classifier = modeling.rebuild_classifier(classifier, FLOAT32)
    uri = f"{run_prefix(run_id)}/{phase}.keras"
    sha, size = modeling.save_to(classifier, uri)
    return PhaseOutcome(phase=phase, model_uri=uri, sha256=sha, size=size,
                        metrics={**metrics, "compute": plan.as_dict()}, ran_on=runtime_info())


def runtime_info() -> dict:
    """Where this process trains: recorded so a user can tell a GPU run from a CPU one."""
    import keras

    devices = []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
    return {"host": socket.gethostname(), "backend": keras.backend.backend(),
            "accelerators": devices, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def outcome_key(run_id: str, phase: str) -> str:
    return f"{run_prefix(run_id)}/{phase}.outcome.json"


def store_outcome(run_id: str, phase: str, outcome: BaseModel) -> str:
    """Write a training phase's outcome next to its model, for a parent run on another worker."""
    location = storage.parse_s3_uri(outcome_key(run_id, phase))
    storage.put_json(location.bucket, location.key, outcome.model_dump(mode="json"))
    return location.uri


def load_outcome(run_id: str, phase: str, model: type[BaseModel]) -> BaseModel:
    location = storage.parse_s3_uri(outcome_key(run_id, phase))
    found = storage.get_json(location.bucket, location.key)
    if found is None:
        from transferflow.errors import TrainingError

        raise TrainingError(f"the {phase} training run finished without writing {location.uri}")
    return model.model_validate(found[0])
