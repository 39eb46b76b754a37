"""Retraining left running, through the real retrain flow (SeaweedFS, a Prefect test server, Keras):
a version trained on grown data is judged against production only on images production never
trained or validated on; a run on unchanged data and configuration ends Skipped.

Data: 3 learnable classes of generated 32 px images in S3; random VGG16 weights; 1 head epoch.
"""

import shutil

import numpy as np
import pytest

from tests.conftest import upload_folder
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.devstack.samples import write_dataset
from transferflow.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture
def weights_uri(bucket, random_weights):
    storage.upload_file(random_weights, bucket, "weights/vgg16-random.weights.h5")
    return f"s3://{bucket}/weights/vgg16-random.weights.h5"


def quick_config(dataset: str, weights: str, **overrides) -> RetrainConfig:
    """As small as a real run gets: one head epoch, no fine-tuning, no calibration; every version
    passes the floor, so the first becomes production."""
    settings = dict(dataset=dataset, weights=weights, image_size=32, head_epochs=1, fine_tune_epochs=0,
                    calibrate=False, batch_size=32, promote_min_accuracy=0.0, model_name="grown")
    return RetrainConfig(**{**settings, **overrides})


def grow(root, tmp_path, per_class: int, seed: int) -> None:
    """Add `per_class` new images to every class folder of `root`."""
    extra = write_dataset(tmp_path / f"extra-{seed}", classes=3, per_class=per_class, seed=seed)
    for path in sorted(extra.rglob("*.*")):
        shutil.move(path, root / path.parent.name / f"new{seed}_{path.name}")


def task_names(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0] for run in runs}


def test_retraining_left_running(prefect_server, bucket, weights_uri, tmp_path):
    """Three scheduled-style runs (if_changed). The first trains production. The second, on the same
    data and configuration, ends Skipped before any download. Then the data grows by a third, the
    team raises test_fraction, and the third run warm-starts from production: production is judged
    only on the new test images it never trained or validated on (checked on digests)."""
    from transferflow.data import load_prepared, ref_for
    from transferflow.retraining.changes import check_changes
    from transferflow.training.model import load_model
    from transferflow_flows.retrain import retrain

    root = write_dataset(tmp_path / "photos", classes=3, per_class=30)
    dataset = upload_folder(root, bucket, "sources/photos")
    config = quick_config(dataset, weights_uri, if_changed=True)
    assert retrain(config=config, return_state=True).name == "Completed"  # production v1

    again = retrain(config=config, return_state=True)
    assert again.is_completed() and again.name == "Skipped"
    assert again.message == ("skipped: the dataset and the training configuration are those of grown:1 "
                             "(production); pass force to train anyway")
    assert again.result() == {"skipped": True, "reason": again.message}
    assert Registry().versions("grown") == [1]
    assert task_names(again.state_details.flow_run_id) == {"check_storage", "check_inputs", "check_changes"}

    grow(root, tmp_path, per_class=10, seed=1)
    upload_folder(root, bucket, "sources/photos")
    assert not check_changes(config).skip  # new files alone make the next run train
    grown = config.model_copy(update={"test_fraction": 0.2, "init_from": "grown@production"})
    third = retrain(config=grown, return_state=True)
    assert third.name == "Completed" and third.result()["version"] == 2

    registry = Registry()
    meta = registry.record("grown", 2)
    assert meta.parameters["init_from"] == "grown:1"  # pinned: the version production was then
    assert meta.model_extra["change_check"]["source"].startswith(dataset)
    assert meta.dataset.membership["file"] == "splits.json.gz"
    production, new = registry.membership("grown", 1), registry.membership("grown", 2)
    seen = set(production.digests("train", "val"))
    test = new.digests("test")
    unseen = [position for position, digest in enumerate(test) if digest not in seen]
    compared = meta.promotion.model_extra["comparisons"]["test"]
    assert compared["excluded"] == len(test) - len(unseen) > 0  # production's val band is now test
    assert compared["images"] == len(unseen)
    # The set production was scored on is exactly the unseen images: its accuracy there, recomputed.
    images, labels = load_prepared(ref_for(meta.dataset.prepared_uri)).splits["test"]
    predicted = load_model("grown:1").predict(images[unseen], verbose=0).argmax(axis=1)
    assert compared["champion"]["accuracy"] == pytest.approx(np.mean(predicted == labels[unseen]))
    assert f"({compared['excluded']} excluded)" in meta.promotion.reason
    card = storage.client().get_object(Bucket=bucket, Key="models/grown/versions/000002/MODEL_CARD.md")
    assert f"**{compared['excluded']} excluded**" in card["Body"].read().decode()
