"""The pipeline's stages up to a trained model, as plain functions. Prefect tasks in tasks/ wrap
these; they can also be called directly (tests, notebooks, other orchestrators).

The engine is chosen here, one floor above both engines: local (data.prepare, training.local) or Ray
(scaleout.*). Neither engine imports this module, so there is no import circle between them.
Big things travel as s3:// URIs; what these functions return is small.
"""

from __future__ import annotations

import hashlib
import logging

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, PrepareOptions, check_leakage, prepare_dataset
from transferflow.training import backbones, local
from transferflow.training.compute import ComputePlan
from transferflow.training.gate import GateDecision, fine_tune_gate
from transferflow.training.local import feature_key, plan_for, standardize_features
from transferflow.training.outcomes import (
    BackboneRef,
    FineTuneOutcome,
    PhaseOutcome,
    checkpoint_prefix,
    load_outcome,
    outcome_key,
    run_prefix,
    runtime_info,
    store_outcome,
)

__all__ = [  # the stages, and what callers of the stages use from training/ (re-exported)
    "BackboneRef", "FineTuneOutcome", "GateDecision", "PhaseOutcome", "build_backbone", "check_storage",
    "checkpoint_prefix", "dataset_cache_key", "decide_fine_tune", "download_dataset", "feature_key",
    "fine_tune", "head_features", "load_outcome", "outcome_key", "plan_for", "prepare_options", "run_prefix",
    "runtime_info", "standardize_features", "store_outcome", "train_head",
]

log = logging.getLogger(__name__)


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
    """Train a new head on the frozen backbone and stage the model: here, or on the Ray cluster
    (engine ray)."""
    if config.engine == "ray":
        from transferflow.scaleout.training import train_head_on_ray

        return train_head_on_ray(config, dataset, backbone, run_id, logger, on_epoch)
    return local.train_head(config, dataset, backbone, run_id, logger, on_epoch)


def fine_tune(config: RetrainConfig, dataset: DatasetRef, head: PhaseOutcome, run_id: str,
              logger=log, on_epoch=None) -> FineTuneOutcome:
    """Unfreeze the top blocks, train at a low rate, keep the result only if val did not drop
    (engine ray: on the cluster). Above a frozen bottom, on its cached activations when it can."""
    if config.engine == "ray":
        from transferflow.scaleout.training import fine_tune_on_ray

        return fine_tune_on_ray(config, dataset, head, run_id, logger, on_epoch)
    return local.fine_tune(config, dataset, head, run_id, logger, on_epoch)


def head_features(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef, classifier, data,
                  plan: ComputePlan, logger=log) -> tuple[dict, dict]:
    """The backbone's pooled features for train and val: reused from object storage, else computed
    (engine ray: on the cluster's workers) and stored (training.local.head_features)."""
    compute = None
    if config.engine == "ray":  # the same features, keys and store; the backbone runs on every worker
        from transferflow.scaleout.features import head_features_on_ray as compute
    return local.head_features(config, dataset, backbone, classifier, data, plan, logger, compute=compute)


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
