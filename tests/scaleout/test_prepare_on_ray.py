"""Dataset preparation on Ray (engine ray) gives the local stage's result: the same fingerprint,
splits, counts, leakage report, and the same decoded bytes in the same order; bad images are
counted and capped with the local stage's error. On the session's 2-node cluster."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import Lines
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.data import load_prepared, prepare_dataset, read_membership
from transferflow.errors import DatasetError
from transferflow.pipeline import phases

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """3 classes of 24 small PNG/JPEG images, plus what exercises the decoder: two large JPEGs
    (decoded at a DCT scale, resized with antialiasing), an exact copy of a training image
    (a leak), and two corrupt files."""
    from PIL import Image

    from transferflow.devstack.samples import sample_image, write_dataset

    root = write_dataset(tmp_path_factory.mktemp("ray-prepare") / "mixed", classes=3, per_class=24, seed=3)
    rng = np.random.default_rng(5)
    for index in range(2):
        Image.fromarray(sample_image(2, 200, rng)).save(root / "class_2" / f"large_{index}.jpg", quality=90)
    shutil.copy(root / "class_0" / "img_0000.png", root / "class_0" / "copy_of_0000.png")
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "class_0" / "truncated.png").write_bytes((root / "class_0" / "img_0002.png").read_bytes()[:60])
    return root


def configs(**changes) -> tuple[RetrainConfig, RetrainConfig]:
    """(engine local, engine ray) for the same preparation: 40 px, so every image is resized."""
    settings = dict(image_size=40, val_fraction=0.15, test_fraction=0.2, seed=7, max_bad_image_fraction=0.05,
                    max_leakage=1.0, weights="none", engine="ray", num_workers=2) | changes
    on_ray = RetrainConfig(**settings)
    return on_ray.model_copy(update={"engine": "local"}), on_ray


def pixels_in_order(ref) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split's (uint8 images, labels) in stored order, whatever the format."""
    splits = {}
    for split, data in load_prepared(ref).splits.items():
        if hasattr(data, "dataset"):
            batches = list(data.dataset(16, shuffle=False, seed=0).as_numpy_iterator())
            data = (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))
        splits[split] = (np.asarray(data[0]).astype(np.uint8), np.asarray(data[1]).astype(np.int32))
    return splits


def test_ray_prepares_what_the_local_stage_prepares(ray_cluster, bucket, mixed_folder):
    local, on_ray = configs(dataset=str(mixed_folder))
    logger, lines = logging.getLogger("test.ray.prepare"), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    here = phases.download_dataset(local)  # small: the in-memory format
    there = phases.download_dataset(on_ray, logger=logger)
    assert any(re.match(r"decoding 77 images on Ray: \d+ tasks on 2 workers", line) for line in lines.lines)
    assert (here.format, there.format) == ("npz", "tfrecord")
    for field in ("fingerprint", "class_names", "image_size", "split_origin", "counts", "leakage"):
        assert getattr(there, field) == getattr(here, field), field
    assert read_membership(there.membership) == read_membership(here.membership)  # names, digests, order
    expected, found = pixels_in_order(here), pixels_in_order(there)
    assert found.keys() == expected.keys()
    for split in expected:
        np.testing.assert_array_equal(found[split][1], expected[split][1], err_msg=f"{split} labels")
        assert found[split][0].tobytes() == expected[split][0].tobytes(), f"{split} pixels or order"
    # The same key as a local streamed preparation: a local run finds the copy made on Ray.
    streamed = replace(phases.prepare_options(local), stream_threshold_mb=0)
    assert prepare_dataset(local.dataset, streamed).uri == there.uri


def test_too_many_bad_images_fail_on_ray_as_they_do_locally(ray_cluster, bucket, mixed_folder):
    local, on_ray = configs(dataset=str(mixed_folder), max_bad_image_fraction=0.01)  # 2 of 77 are corrupt
    with pytest.raises(DatasetError) as here:
        phases.download_dataset(local)
    with pytest.raises(DatasetError) as there:
        phases.download_dataset(on_ray)
    assert str(there.value) == str(here.value)
    assert "broken.jpg" in str(there.value) and "truncated.png" in str(there.value)
    assert not list(storage.list_keys(bucket, "datasets/"))  # nothing partial is visible
