"""image_size "auto" in the dataset stage: chosen from the images, stored, and found again."""

import logging

import pytest

from transferflow.data import PrepareOptions, prepare_dataset
from transferflow.devstack.samples import write_dataset

AUTO = PrepareOptions(image_size="auto", val_fraction=0.2, test_fraction=0.2, seed=0, auto_bounds=(32, 224))


def test_auto_prepares_at_the_photos_size_and_a_rerun_reads_no_image(bucket, tmp_path, caplog, monkeypatch):
    folder = write_dataset(tmp_path / "photos", classes=2, per_class=6, size=100)
    with caplog.at_level(logging.INFO):
        ref = prepare_dataset(str(folder), AUTO)
    assert ref.image_size == 96  # the median shorter side, 100, to a multiple of 32
    assert "image size auto: 96 px (median shorter side 100 px of 12 images" in caplog.text
    sized = prepare_dataset(str(folder), PrepareOptions(96, 0.2, 0.2, 0))
    assert sized == ref  # the same stored copy as an explicit --image-size 96

    caplog.clear()
    monkeypatch.setattr("transferflow.data.prepare.image_shape",
                        lambda path: pytest.fail("read a header again"))
    with caplog.at_level(logging.INFO):
        again = prepare_dataset(str(folder), AUTO)
    assert "image size auto" not in caplog.text and "already prepared" in caplog.text
    assert again == ref


def test_auto_is_bounded_by_the_backbone(bucket, tmp_path):
    folder = write_dataset(tmp_path / "big", classes=2, per_class=5, size=320)
    ref = prepare_dataset(str(folder), PrepareOptions("auto", 0.2, 0.2, 0, auto_bounds=(32, 224)))
    assert ref.image_size == 224
