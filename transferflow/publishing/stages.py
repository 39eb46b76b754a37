"""The stages after training, as plain functions: calibration, the test evaluation, the
promotion gate, the SavedModel export, the verified ONNX/LiteRT exports, the version's metadata,
registration and promotion, and removing the run's staged files. Prefect tasks in tasks/ wrap these.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import DatasetRef, load_prepared
from transferflow.judging.promotion import PromotionAction, PromotionDecision
from transferflow.judging.scoring import Scored
from transferflow.pipeline.phases import BackboneRef, FineTuneOutcome, PhaseOutcome, run_prefix
from transferflow.registry.aliases import ANY
from transferflow.registry.documents import SCHEMA_VERSION, Calibration, Registration, TrainingRecord
from transferflow.training.gate import GateDecision

log = logging.getLogger(__name__)


class Evaluation(BaseModel):
    """The final model's answers and metrics on the test split, and on the golden set if any."""

    test: Scored
    golden: Scored | None = None


def calibrate_model(config: RetrainConfig, dataset: DatasetRef, final: PhaseOutcome, run_id: str,
                    logger=log) -> tuple[PhaseOutcome, Calibration]:
    """Fit temperature scaling on the validation split and fold it into a copy of the final model
    (staged next to it); the model is unchanged when calibration is off or would not help."""
    from transferflow.judging.calibration import calibration_plan, fold_temperature
    from transferflow.judging.scoring import predict
    from transferflow.training import model as modeling

    if not config.calibrate:
        return final, Calibration(reason="calibration off (--no-calibrate)")
    model = modeling.load_from(final.model_uri)
    labels, probabilities = predict(model, load_prepared(dataset).splits["val"], config.batch_size)
    plan = calibration_plan(labels, probabilities)
    logger.info("calibration: %s", plan.reason)
    if not plan.applied:
        return final, plan
    fold_temperature(model, plan.temperature)
    uri = f"{run_prefix(run_id)}/calibrated/model.keras"
    digest, size = modeling.save_to(model, uri)
    return final.model_copy(update={"model_uri": uri, "sha256": digest, "size": size}), plan


def evaluate_model(config: RetrainConfig, dataset: DatasetRef, model_uri: str, logger=log) -> Evaluation:
    """Every metric of the final model on the held-out test split, and on the golden set if set."""
    from transferflow.judging.evaluation import score_model
    from transferflow.training import model as modeling

    model = modeling.load_from(model_uri)
    test = score_model(model, dataset.class_names, dataset, "test", config.batch_size)
    return _with_golden(config, dataset, model, test, logger)


def _with_golden(config: RetrainConfig, dataset: DatasetRef, model, test: Scored, logger) -> Evaluation:
    """The evaluation of a model scored `test` on the test split: logged, with its golden set's."""
    from transferflow.judging.evaluation import score_on_golden
    from transferflow.registry import Registry

    metrics = test.metrics
    logger.info("test accuracy %.4f, macro-F1 %.4f, calibration error %.4f on %d images (chance %.4f)",
                metrics["accuracy"], metrics["macro_f1"], metrics["ece"], metrics["images"],
                1 / len(dataset.class_names))
    golden_set = Registry().golden(config.registry_name)
    golden = None
    if golden_set is not None:
        golden = score_on_golden(model, dataset.class_names, golden_set, dataset.image_size,
                                 config.batch_size, logger)
        logger.info("golden set %s: accuracy %.4f, macro-F1 %.4f on %d images", golden_set.source,
                    golden.metrics["accuracy"], golden.metrics["macro_f1"], golden.metrics["images"])
    return Evaluation(test=test, golden=golden)


def decide_promotion(config: RetrainConfig, dataset: DatasetRef, evaluation: Evaluation,
                     logger=log) -> PromotionDecision:
    """The promotion gate: the floor, then production scored on the very images the new version
    was scored on (its test split, and the golden set), compared check by check."""
    from transferflow.judging.promotion import PromotionRule, promotion_gate
    from transferflow.registry import Registry

    registry, name = Registry(), config.registry_name
    current = registry.alias_document(name, "production")  # None for a new model: one read, no listing
    meta = registry.record(name, current.version) if current else None
    champion = _champion(config, dataset, evaluation, current.version, meta, logger) if meta else None
    challenger = {"test": evaluation.test, **({"golden": evaluation.golden} if evaluation.golden else {})}
    decision = promotion_gate(PromotionRule.from_config(config), challenger, dataset.class_names, champion)
    logger.info("promotion: %s", decision.reason)
    return decision


def _champion(config: RetrainConfig, dataset: DatasetRef, evaluation: Evaluation, version: int,
              meta, logger):
    """Production, scored with its own stored, verified artifact at its own image size on the
    same test images (and golden set) as the new version."""
    from transferflow.errors import RegistryError
    from transferflow.judging.evaluation import prepared_at, score_model, score_on_golden
    from transferflow.judging.promotion import Champion
    from transferflow.pipeline.phases import prepare_options
    from transferflow.registry import Registry
    from transferflow.training import model as modeling

    if set(meta.classes) != set(dataset.class_names):
        return Champion(version=version, classes=meta.classes)  # the class-set check decides
    try:
        model = modeling.load_model(f"{config.registry_name}:{version}")  # size and sha256 checked first
    except RegistryError as exc:  # the new version is still registered; production stays as it is
        return Champion(version=version, classes=meta.classes, problem=str(exc))
    size = meta.image_size or dataset.image_size
    test_images = prepared_at(config.dataset, dataset, prepare_options(config), size, logger)
    scored = {"test": score_model(model, meta.classes, test_images, "test", config.batch_size)}
    compared_on = {"test": _unseen_by(config.registry_name, version, meta, dataset, test_images, logger)}
    golden_set = Registry().golden(config.registry_name)
    if evaluation.golden is not None and golden_set is not None:
        scored["golden"] = score_on_golden(model, meta.classes, golden_set, size, config.batch_size, logger)
    logger.info("production v%d on the same %d test images: accuracy %.4f, macro-F1 %.4f", version,
                scored["test"].metrics["images"], scored["test"].metrics["accuracy"],
                scored["test"].metrics["macro_f1"])
    return Champion(version=version, classes=meta.classes,
                    scored={key: _in_order(value, meta.classes, dataset.class_names)
                            for key, value in scored.items()}, compared_on=compared_on)


def _unseen_by(name: str, version: int, meta, dataset: DatasetRef, test_images: DatasetRef, logger):
    """The new test split minus every image production trained or validated on: by content digest,
    or, for a production registered before digests were kept, by decoded pixels at its size."""
    from transferflow.data import read_membership
    from transferflow.judging.comparison_set import comparison_set, pixel_digests
    from transferflow.registry import Registry

    production = Registry().membership(name, version)
    if production is not None or dataset.membership is None:
        seen = set(production.digests("train", "val")) if production is not None else None
        test = read_membership(dataset.membership).digests("test") if dataset.membership else None
        chosen = comparison_set(test, seen)
    else:
        old = _prepared_copy(meta.dataset.prepared_uri)
        if old is None:
            logger.info("production v%d's prepared copy is gone: what it trained on is unknown", version)
            return comparison_set(None, None)
        seen = set(pixel_digests(old, ("train", "val")))
        chosen = comparison_set(pixel_digests(test_images, ("test",)), seen, "decoded pixels")
    if chosen.excluded:
        logger.info("%d test images were in production v%d's train or val split (matched by %s): left out "
                    "of the comparison", chosen.excluded, version, chosen.matched_by)
    return chosen


def _prepared_copy(prepared_uri: str | None) -> DatasetRef | None:
    """A prepared dataset's manifest, if it and its data are still in the store."""
    from transferflow.data import ref_for
    from transferflow.errors import DatasetError

    if not prepared_uri:
        return None
    try:
        ref = ref_for(prepared_uri)
    except DatasetError:
        return None
    location = storage.parse_s3_uri(ref.uri if ref.format == "npz" else ref.shards["train"][0])
    return ref if storage.head(location.bucket, location.key) is not None else None


def _in_order(scored: Scored, model_classes: list[str], wanted: list[str]) -> Scored:
    """Answers re-indexed from one model's class order into another's (same class set)."""
    position = {name: index for index, name in enumerate(wanted)}
    remap = [position[name] for name in model_classes]
    return scored.model_copy(update={"labels": [remap[i] for i in scored.labels],
                                     "predicted": [remap[i] for i in scored.predicted]})


def export_model(final: PhaseOutcome, run_id: str, logger=log) -> dict:
    """Stage a TensorFlow SavedModel of the final model next to it, for TF Serving."""
    from transferflow.training import model as modeling

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


def export_formats(config: RetrainConfig, dataset: DatasetRef, final: PhaseOutcome, run_id: str,
                   logger=log) -> dict:
    """Convert the final model to each format of `config.export`, check each on the test split
    against it (exports.export_verified: an export that fails is an error, never published), and
    stage the files under the run's prefix; returns their metadata entries."""
    if not config.export:
        return {}
    from transferflow.publishing.exports import export_verified
    from transferflow.registry.layout import export_file
    from transferflow.training import model as modeling

    model, prepared = modeling.load_from(final.model_uri), load_prepared(dataset)
    same_order = np.arange(len(dataset.class_names))  # the model was trained on these very classes
    staged = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in config.export:
            made = export_verified(model, name, prepared.splits["test"], same_order, Path(tmp),
                                   prepared.splits["train"], logger)
            relative = export_file(name, made.entry["sha256"])
            location = storage.parse_s3_uri(f"{run_prefix(run_id)}/{relative}")
            storage.upload_file(made.path, location.bucket, location.key)
            staged[name] = {**made.entry, "file": relative, "staged_uri": location.uri}
    return staged


def evaluate_and_stage_reference(config: RetrainConfig, dataset: DatasetRef, final: PhaseOutcome, run_id: str,
                                 logger=log) -> tuple[Evaluation, dict]:
    """The final model's evaluation (evaluate_model's) and its monitoring reference (stage_reference's)
    from one load of the model and one pass over the test and val splits: the reference is made of
    the very answers the test split is scored on."""
    from transferflow.errors import DatasetError
    from transferflow.judging.scoring import scored
    from transferflow.monitoring.features import split
    from transferflow.monitoring.reference import stage_reference as stage
    from transferflow.monitoring.reference import view_splits
    from transferflow.training import model as modeling
    from transferflow.training.fit import split_labels

    model = modeling.load_from(final.model_uri)
    outputs = view_splits(model, dataset, config.batch_size)
    if "test" not in outputs:
        raise DatasetError(f"dataset {dataset.source} has no test split")
    classes = dataset.class_names
    labels = split_labels(load_prepared(dataset).splits["test"]).astype(np.int64)
    probabilities, _ = split(outputs["test"], len(classes))
    test = scored(labels, np.asarray(probabilities, np.float64), classes)
    evaluation = _with_golden(config, dataset, model, test, logger)
    reference = stage(model, classes, dataset, run_prefix(run_id), config.batch_size, logger, outputs)
    return evaluation, reference


def build_metadata(config: RetrainConfig, dataset: DatasetRef, backbone: BackboneRef,
                   head: PhaseOutcome, gate: GateDecision, fine: FineTuneOutcome | None,
                   evaluation: Evaluation, flow_run_id: str | None, promotion=None,
                   savedmodel: dict | None = None, calibration: Calibration | None = None,
                   final: PhaseOutcome | None = None, formats: dict | None = None,
                   reference: dict | None = None, change_check=None,
                   timings: dict | None = None) -> TrainingRecord:
    """Everything needed to know where a model came from and how good it is. `final` is the
    model registered (the calibrated one, when calibration was applied); `formats` the verified
    exports of export_formats; `reference` the staged monitoring reference of
    evaluate_and_stage_reference;
    `change_check` the cheap signature a later if_changed run compares; `timings` the seconds per
    stage so far (timing.StageClock)."""
    from transferflow.data.downloads import redact

    final = final or (fine.chosen if fine else head)
    return TrainingRecord.model_validate({
        "schema_version": SCHEMA_VERSION,
        "parameters": {**config.model_dump(mode="json"), "dataset": redact(config.dataset)},
        "metrics": {
            "head": head.metrics,
            "fine_tune": fine.tuned.metrics if fine else None,
            "test": evaluation.test.metrics,
            "golden": evaluation.golden.metrics if evaluation.golden else None,
            "calibration": calibration.model_dump() if calibration else None,
        },
        "gate": {
            "fine_tune": gate.model_dump(),
            "keep_fine_tuned": fine.kept.model_dump() if fine else None,
            "final_phase": final.phase,
        },
        "dataset": {
            "source": dataset.source, "fingerprint": dataset.fingerprint, "prepared_uri": dataset.uri,
            "split_origin": dataset.split_origin, "counts": dataset.counts,
            "leakage": leakage.model_dump() if (leakage := getattr(dataset, "leakage", None)) else None,
            **({"extra": dataset.extra} if getattr(dataset, "extra", None) else {}),
            "membership": _membership_entry(dataset),
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
        "exports": {**({"savedmodel": savedmodel} if savedmodel else {}), **(formats or {})},
        "monitoring": {"reference": reference} if reference else {},
        "change_check": change_check.model_dump() if change_check is not None else None,
        **({"timings": timings} if timings else {}),
    })


def _membership_entry(dataset: DatasetRef) -> dict | None:
    """The version's splits.json.gz: a copy of the prepared dataset's membership sidecar, so that a
    later gate knows which images this version trained and validated on."""
    from transferflow.registry.layout import MEMBERSHIP

    found = getattr(dataset, "membership", None)
    if found is None:
        return None
    return {"file": MEMBERSHIP, "sha256": found.sha256, "size": found.size, "images": found.images,
            "staged_uri": found.uri}


def register_model(config: RetrainConfig, metadata: TrainingRecord, final: PhaseOutcome, run_id: str,
                   logger=log) -> Registration:
    """Publish the chosen model, its SavedModel, its verified exports, its monitoring reference and
    MODEL_CARD.md as a new version; move `latest`."""
    from transferflow.registry import Registry
    from transferflow.reporting.card import model_card

    registry = Registry()
    savedmodel = metadata.exports.get("savedmodel")
    staged = {}
    if savedmodel:
        staged = {f"savedmodel/{relative}": (f"{savedmodel['staged_uri']}/{relative}", item["sha256"],
                                             item["size"])
                  for relative, item in savedmodel["files"].items()}
    staged.update({item["file"]: (item["staged_uri"], item["sha256"], item["size"])
                   for key, item in metadata.exports.items() if key != "savedmodel" and "staged_uri" in item})
    if reference := metadata.monitoring.get("reference"):  # copied and verified before metadata.json
        staged[reference["file"]] = (reference["staged_uri"], reference["sha256"], reference["size"])
    if metadata.dataset.membership:  # copied and verified like the artifact, before metadata.json
        item = metadata.dataset.membership
        staged[item["file"]] = (item["staged_uri"], item["sha256"], item["size"])
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
