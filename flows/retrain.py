"""The retrain flow: wiring only. The order of the stages and the gate's `if`."""

import uuid

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed

from transferflow.config import RetrainConfig
from transferflow.pipeline.timing import StageClock
from transferflow.publishing.stages import build_metadata
from transferflow.retraining.watch import DatasetChange, apply_change
from transferflow_flows.naming import retrain_run_name
from transferflow_tasks.backbone import build_backbone
from transferflow_tasks.credentials import use_credentials_block
from transferflow_tasks.dataset import check_changes, check_inputs, check_storage, download_dataset
from transferflow_tasks.evaluation import calibrate_model, evaluate_model
from transferflow_tasks.registry import (
    decide_promotion,
    export_formats,
    export_model,
    promote_model,
    register_model,
)
from transferflow_tasks.remote import choose_training_target
from transferflow_tasks.reporting import announce_registration, publish_report
from transferflow_tasks.training import decide_fine_tune, run_phase


@flow(name="retrain", flow_run_name=retrain_run_name,
      description="Transfer-learn an image classifier on a dataset and register it in S3.")
def retrain(config: RetrainConfig = RetrainConfig(),  # noqa: B008 (a frozen default)
            changed: DatasetChange | None = None) -> dict:
    """`changed` is set by the on-data trigger (transferflow.dataset.changed): the dataset that
    changed, trained on with the deployment's config. A run with nothing new to train on (if_changed)
    ends Completed, named Skipped."""
    clock = StageClock()  # where the time goes, stage by stage: in the metadata, the report and the CLI
    use_credentials_block()
    config = apply_change(config, changed)
    run_id = flow_run.id or uuid.uuid4().hex
    with clock("checks"):
        check_storage()
        pinned = check_inputs(config)  # init_from pinned to a version number
        changes = check_changes(config, changed.fingerprint if changed else None)
    if changes.skip:  # the run ends Completed, named Skipped: nothing new to train on
        return Completed(name="Skipped", message=changes.reason,
                         data={"skipped": True, "reason": changes.reason})
    config = pinned
    with clock("dataset"):
        dataset = download_dataset(config)
    with clock("backbone"):
        backbone = build_backbone(config, dataset)
        target = choose_training_target(config)
    with clock("head"):
        head = run_phase("head", target, config, dataset, run_id, backbone=backbone)
    clock.split("head", "features", (head.metrics.get("features") or {}).get("seconds"))
    gate = decide_fine_tune(config, dataset, head)
    with clock("fine_tune"):
        fine = run_phase("fine_tune", target, config, dataset, run_id, head=head) if gate.passed else None
    with clock("calibration"):
        final, calibration = calibrate_model(config, dataset, fine.chosen if fine else head, run_id)
    with clock("evaluation"):
        evaluation, reference = evaluate_model(config, dataset, final, run_id)  # and the monitoring reference
    with clock("promotion"):
        promotion = decide_promotion(config, dataset, evaluation)
    with clock("export"):
        savedmodel = export_model(final, run_id)
        formats = export_formats(config, dataset, final, run_id) if config.export else {}
    metadata = build_metadata(config, dataset, backbone, head, gate, fine, evaluation, flow_run.id,
                              promotion, savedmodel, calibration, final, formats, reference,
                              changes.signature, clock.stages())
    with clock("registration"):
        registered = register_model(config, metadata, final, run_id)
        registered = promote_model(config, registered, promotion)
        announce_registration(metadata, registered)
    with clock("report"):
        publish_report(metadata, registered, clock.stages())
    # a plain dict, as the flow's result has always been, with the run's timings
    return {**registered.model_dump(), "timings": clock.stages()}
