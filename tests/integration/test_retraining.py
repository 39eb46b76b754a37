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


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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


def test_production_is_judged_only_on_test_images_it_never_trained_or_validated_on(
        prefect_server, bucket, weights_uri, tmp_path):
    from transferflow.data import load_prepared, ref_for
    from transferflow.model import load_model
    from transferflow_flows.retrain import retrain

    root = write_dataset(tmp_path / "photos", classes=3, per_class=30)
    dataset = upload_folder(root, bucket, "sources/photos")
    retrain(config=quick_config(dataset, weights_uri))  # production v1, on the old data
    grow(root, tmp_path, per_class=10, seed=1)
    upload_folder(root, bucket, "sources/photos")
    # The team also raised test_fraction: production's val band now lies inside the test band.
    retrain(config=quick_config(dataset, weights_uri, test_fraction=0.2))

    registry = Registry()
    meta = registry.record("grown", 2)
    assert meta.dataset.membership["file"] == "splits.json.gz"
    production, new = registry.membership("grown", 1), registry.membership("grown", 2)
    seen = set(production.digests("train", "val"))
    test = new.digests("test")
    unseen = [position for position, digest in enumerate(test) if digest not in seen]
    compared = meta.promotion.model_extra["comparisons"]["test"]
    assert compared["excluded"] == len(test) - len(unseen) > 0
    assert compared["images"] == len(unseen)
    # The set production was scored on is exactly the unseen images: its accuracy there, recomputed.
    images, labels = load_prepared(ref_for(meta.dataset.prepared_uri)).splits["test"]
    predicted = load_model("grown:1").predict(images[unseen], verbose=0).argmax(axis=1)
    assert compared["champion"]["accuracy"] == pytest.approx(np.mean(predicted == labels[unseen]))
    assert f"({compared['excluded']} excluded)" in meta.promotion.reason
    card = storage.client().get_object(Bucket=bucket, Key="models/grown/versions/000002/MODEL_CARD.md")
    assert f"**{compared['excluded']} excluded**" in card["Body"].read().decode()
