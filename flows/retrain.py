"""The retrain flow: wiring only. The order of the stages and the gate's `if`."""

import uuid

from prefect import flow
from prefect.runtime import flow_run

from tasks.backbone import build_backbone
from tasks.dataset import check_storage, download_dataset
from tasks.evaluation import evaluate_model
from tasks.registry import register_model
from tasks.training import decide_fine_tune, fine_tune, train_head
from transferflow.config import RetrainConfig
from transferflow.phases import build_metadata


@flow(name="retrain", description="Transfer-learn a classifier on a dataset and register it in S3.")
def retrain(config: RetrainConfig = RetrainConfig()) -> dict:  # noqa: B008 (a frozen default)
    run_id = flow_run.id or uuid.uuid4().hex
    check_storage()
    dataset = download_dataset(config)
    backbone = build_backbone(config)
    head = train_head(config, dataset, backbone, run_id)
    gate = decide_fine_tune(config, head)
    fine = fine_tune(config, dataset, head, run_id) if gate.passed else None
    final = fine.chosen if fine else head
    test = evaluate_model(dataset, final.model_uri, config.batch_size)
    metadata = build_metadata(config, dataset, backbone, head, gate, fine, test, flow_run.id)
    return register_model(config, metadata, final, run_id)
