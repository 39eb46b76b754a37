"""The training phases in this process (engine local): the head on the frozen backbone (on its
cached features when it can), then fine-tuning (on the frozen bottom's cached activations when it
can). scaleout/ has the Ray counterparts; transferflow.pipeline.phases chooses between them."""

from __future__ import annotations

import logging
import time

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, load_prepared
from transferflow.training import backbones
from transferflow.training.compute import FLOAT32, ComputePlan, compute_scope, plan_compute
from transferflow.training.gate import keep_fine_tuned
from transferflow.training.outcomes import (
    BackboneRef,
    FineTuneOutcome,
    PhaseOutcome,
    checkpoint_prefix,
    run_prefix,
    runtime_info,
)

log = logging.getLogger(__name__)


def train_head(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef, run_id: str,
               logger=log, on_epoch=None) -> PhaseOutcome:
    """Train a new head on the frozen backbone, in this process, and stage the model."""
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
        options = fit_options(config, plan, data, logger, on_epoch, config.head_epochs,
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
    Here, in this process; above a frozen bottom, on its cached activations when it can."""
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
        options = fit_options(config, plan, data, logger, on_epoch, config.fine_tune_epochs,
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


def plan_for(config: RetrainConfig, logger=log) -> ComputePlan:
    """The precision, XLA and strategy this worker will use, logged with the reasons."""
    plan = plan_compute(config.mixed_precision, config.xla, config.strategy)
    logger.info("compute: %s", plan.describe(config.batch_size))
    return plan


def fit_options(config: RetrainConfig, plan: ComputePlan, data, logger, on_epoch, epochs: int,
                learning_rate: float, checkpoint_uri: str | None = None) -> dict:
    """fit_phase's keyword arguments for a phase of this run (the Ray replicas use them too)."""
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
                  plan: ComputePlan, logger=log, compute=None) -> tuple[dict, dict]:
    """The backbone's pooled features for train and val: from object storage when an earlier run
    computed them for the same dataset, backbone, weights and image size, else computed and stored
    (with, in the same pass, the frozen bottom's activations that fine-tuning will train on).
    `compute(config, dataset, key, classifier, data, plan, logger)` -> (features, info) computes
    them when none are stored: by default here; engine ray passes scaleout.features' cluster one."""
    from transferflow.training.features import load_features, save_features

    key = feature_key(config, dataset, plan, backbone.weights_sha256)
    stored = load_features(key)
    if stored is not None and {"train", "val"} <= set(stored):
        logger.info("reusing backbone features from %s (same dataset, backbone, weights and size)",
                    key.uri())
        return stored, {"source": "reused", "uri": key.uri()}
    started = time.monotonic()
    features, info = (compute or _local_features)(config, dataset, key, classifier, data, plan, logger)
    uri = save_features(key, features)
    seconds = time.monotonic() - started
    logger.info("backbone features computed once for %d train + %d val images (%.1fs), stored at %s; "
                "training the head on them", len(features["train"]), len(features["val"]), seconds, uri)
    return features, {"source": "computed", "uri": uri, "seconds": round(seconds, 2), **info}


def _local_features(config: RetrainConfig, dataset: DatasetRef, key, classifier, data, plan: ComputePlan,
                    logger) -> tuple[dict, dict]:
    """Pooled features; when fine-tuning will train above a frozen bottom whose activations are not
    stored yet, those too, from the same pass (the bottom is the larger part of the backbone's work).
    The info names the stored activations, if any."""
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
            return features, {"activations": cached.info()}
    return extract_features(classifier, splits, batch), {}


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
