"""The stages after training, as plain functions: the test evaluation, the promotion gate,
the SavedModel export, the version's metadata, registration and promotion, removing the run's
staged files, and re-evaluating a registered version. Prefect tasks in tasks/ wrap these.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from transferflow import localcache, storage
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, load_prepared
from transferflow.gate import GateDecision, PromotionAction
from transferflow.phases import BackboneRef, FineTuneOutcome, PhaseOutcome, run_prefix
from transferflow.registry.aliases import ANY
from transferflow.registry.documents import SCHEMA_VERSION, Registration, TrainingRecord

log = logging.getLogger(__name__)


def evaluate_model(dataset: DatasetRef, model_uri: str, batch_size: int, logger=log) -> dict:
    """Accuracy and per-class accuracy on the held-out test split."""
    from transferflow import model as modeling
    from transferflow.training import evaluate

    data = load_prepared(dataset)
    result = evaluate(modeling.load_from(model_uri), data.splits["test"], dataset.class_names, batch_size)
    logger.info("test accuracy %.4f on %d images (chance %.4f)", result["accuracy"], result["images"],
                1 / len(dataset.class_names))
    return result


def decide_promotion(config: RetrainConfig, dataset: DatasetRef, test: dict, logger=log):
    """The promotion gate against the current production version (if any) of this model."""
    from transferflow.gate import promotion_gate
    from transferflow.registry import Registry

    registry, name = Registry(), config.registry_name
    current = registry.alias_document(name, "production")  # None for a new model: one read, no listing
    meta = registry.record(name, current.version) if current else None
    decision = promotion_gate(test["accuracy"], dataset.fingerprint, config.promote_min_accuracy,
                              config.promote_tolerance, config.auto_promote,
                              (current.version, meta) if meta else None,
                              test_counts=[c["support"] for c in test["per_class"].values()])
    logger.info("promotion: %s", decision.reason)
    return decision


def export_model(final: PhaseOutcome, run_id: str, logger=log) -> dict:
    """Stage a TensorFlow SavedModel of the final model next to it, for TF Serving."""
    from transferflow import model as modeling

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "savedmodel"
        signature = modeling.export_savedmodel(modeling.load_from(final.model_uri), root)
        location = storage.parse_s3_uri(f"{run_prefix(run_id)}/savedmodel")
        files = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            relative = path.relative_to(root).as_posix()
            storage.upload_file(path, location.bucket, f"{location.key}/{relative}")
            files[relative] = {"sha256": storage.sha256_file(path), "size": path.stat().st_size}
    logger.info("exported a SavedModel (%d files) to %s", len(files), location.uri)
    return {**signature, "staged_uri": location.uri, "files": files}


def build_metadata(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef,
                   head: PhaseOutcome, gate: GateDecision, fine: FineTuneOutcome | None,
                   test: dict, flow_run_id: str | None, promotion=None,
                   savedmodel: dict | None = None) -> TrainingRecord:
    """Everything needed to know where a model came from and how good it is."""
    from transferflow.data.downloads import redact

    final = fine.chosen if fine else head
    return TrainingRecord.model_validate({
        "schema_version": SCHEMA_VERSION,
        "parameters": {**config.model_dump(mode="json"), "dataset": redact(config.dataset)},
        "metrics": {
            "head": head.metrics,
            "fine_tune": fine.tuned.metrics if fine else None,
            "test": test,
        },
        "gate": {
            "fine_tune": gate.model_dump(),
            "keep_fine_tuned": fine.kept.model_dump() if fine else None,
            "final_phase": final.phase,
        },
        "dataset": {
            "source": dataset.source, "fingerprint": dataset.fingerprint, "prepared_uri": dataset.uri,
            "split_origin": dataset.split_origin, "counts": dataset.counts,
        },
        "backbone": backbone.model_dump(),
        "classes": dataset.class_names,
        "image_size": dataset.image_size,
        "preprocessing": {
            "input": f"RGB pixel values 0-255, shape ({dataset.image_size}, {dataset.image_size}, 3)",
            "resize": "bilinear with antialias to image_size x image_size",
            "in_model": backbone.preprocessing + " (a BackbonePreprocess layer inside the model)",
        },
        "training": {"head": head.ran_on, "fine_tune": fine.tuned.ran_on if fine else None},
        "lineage": {"flow_run_id": flow_run_id, "staged_model_uri": final.model_uri},
        "promotion": promotion.model_dump() if promotion is not None else None,
        "exports": {"savedmodel": savedmodel} if savedmodel else {},
    })


def register_model(config: RetrainConfig, metadata: TrainingRecord, final: PhaseOutcome, run_id: str,
                   logger=log) -> Registration:
    """Publish the chosen model, its SavedModel and MODEL_CARD.md as a new version; move `latest`."""
    from transferflow.card import model_card
    from transferflow.registry import Registry

    registry = Registry()
    savedmodel = metadata.exports.get("savedmodel")
    staged = {}
    if savedmodel:
        staged = {f"savedmodel/{relative}": (f"{savedmodel['staged_uri']}/{relative}", item["sha256"],
                                             item["size"])
                  for relative, item in savedmodel["files"].items()}
    version = registry.register(
        config.registry_name, final.model_uri, final.sha256, final.size, metadata, run_id,
        extra_files=staged,
        extra_documents=lambda number: {"MODEL_CARD.md": model_card(config.registry_name, number, metadata)})
    logger.info("registered %s version %d at %s", version.name, version.version, version.artifact_uri)
    return _registered(registry, version.name, version.version, version.artifact_uri)


def _registered(registry, name: str, version: int, artifact_uri: str) -> Registration:
    return Registration(name=name, version=version, artifact_uri=artifact_uri,
                        aliases=registry.aliases_of(name, version))


def apply_promotion(config: RetrainConfig, registered: Registration, decision, logger=log) -> Registration:
    """Move production (or candidate) to a blessed version, conditional on production not having
    moved since the gate looked at it: a concurrent promotion is a conflict, never a silent win."""
    from transferflow.registry import Registry

    if decision.action == PromotionAction.NONE:
        return registered
    registry, name, version = Registry(), registered.name, registered.version
    alias = "production" if decision.action == PromotionAction.PROMOTE else "candidate"
    expected = decision.production_version if alias == "production" else ANY
    registry.promote(name, version, alias, reason=decision.reason, expected_current=expected)
    logger.info("%s:%d is now %s", name, version, alias)
    return _registered(registry, name, version, registered.artifact_uri)


def cleanup_run(run_id: str) -> int:
    """Remove a run's staged models once the registry holds its copy."""
    location = storage.parse_s3_uri(run_prefix(run_id))
    return storage.delete_prefix(location.bucket, location.key + "/")


def reproduce_evaluation(reference: str, tolerance: float = 0.0, logger=log) -> dict:
    """Download a registered version, check its bytes, and re-measure its test accuracy.

    Fails if the artifact does not match its recorded sha256 or the accuracy moved by
    more than `tolerance`.
    """
    from transferflow import model as modeling
    from transferflow.data import load_prepared, ref_for
    from transferflow.errors import RegistryError
    from transferflow.registry import Registry
    from transferflow.training import evaluate

    registry = Registry()
    name, version = registry.resolve(reference)
    meta = registry.record(name, version)
    path = localcache.cached_download(meta.artifact.uri)
    if storage.sha256_file(path) != meta.artifact.sha256:
        path.unlink()
        raise RegistryError(f"{name}:{version} artifact does not match its recorded sha256: "
                            "the stored model was changed after registration")
    data = load_prepared(ref_for(meta.dataset.prepared_uri))
    result = evaluate(modeling.load_classifier(str(path)), data.splits["test"], meta.classes)
    recorded = meta.test_accuracy
    logger.info("%s:%d test accuracy recorded %.4f, reproduced %.4f", name, version, recorded,
                result["accuracy"])
    if abs(result["accuracy"] - recorded) > tolerance:
        raise RegistryError(f"{name}:{version} reproduces test accuracy {result['accuracy']:.4f}, "
                            f"not the recorded {recorded:.4f}")
    return {"reference": f"{name}:{version}", "sha256": meta.artifact.sha256,
            "recorded": recorded, "reproduced": result["accuracy"]}
