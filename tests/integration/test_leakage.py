"""The leakage check in the dataset stage: test images copied from train are counted when the
dataset is prepared, and above max_leakage the stage fails before any training, naming them."""

import logging
import shutil

import numpy as np
import pytest

from tests.conftest import Lines
from transferflow.config import RetrainConfig
from transferflow.devstack.samples import write_dataset
from transferflow.errors import DatasetError
from transferflow.pipeline import phases


def leaky_folder(root):
    """train/, val/ and test/ of 2 classes x 10 generated images; then 4 more test images: two byte
    copies of training files, one training JPEG saved again as PNG (other bytes, same pixels), and
    one training image 8 levels brighter (a near duplicate)."""
    import tensorflow as tf

    write_dataset(root, classes=2, per_class=10, splits=("train", "val", "test"))
    train, test = root / "train", root / "test"
    shutil.copy(train / "class_0" / "img_0000.png", test / "class_0" / "copy_a.png")
    shutil.copy(train / "class_1" / "img_0002.png", test / "class_1" / "copy_b.png")
    pixels = tf.io.decode_jpeg((train / "class_1" / "img_0003.jpg").read_bytes()).numpy()
    (test / "class_1" / "converted.png").write_bytes(tf.io.encode_png(pixels).numpy())
    pixels = tf.io.decode_png((train / "class_0" / "img_0004.png").read_bytes()).numpy()
    brighter = np.clip(pixels.astype(int) + 8, 0, 255).astype(np.uint8)
    (test / "class_0" / "brighter.png").write_bytes(tf.io.encode_png(brighter).numpy())
    return root


def test_leaked_test_images_fail_the_stage_until_the_limit_is_raised(bucket, tmp_path):
    dataset = str(leaky_folder(tmp_path / "leaky"))
    with pytest.raises(DatasetError, match=r"4 of 24 test images \(16.7%\) duplicate training images: "
                       r"3 exact, 1 near, .*test/class_0/copy_a.png ~ train/class_0/img_0000.png"
                       r".*limit of 5.0%"):
        phases.download_dataset(RetrainConfig(dataset=dataset, image_size=32))

    logger, lines = logging.getLogger("leakage-raised"), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    raised = RetrainConfig(dataset=dataset, image_size=32, max_leakage=0.2)
    ref = phases.download_dataset(raised, logger=logger)
    assert any("already prepared" in line for line in lines.lines)  # the stored copy, not decoded again
    report = ref.leakage
    assert (report.test_images, report.train_images, report.exact, report.near) == (24, 20, 3, 1)
    assert report.examples == [["test/class_0/copy_a.png", "train/class_0/img_0000.png"],
                               ["test/class_1/converted.png", "train/class_1/img_0003.jpg"],
                               ["test/class_1/copy_b.png", "train/class_1/img_0002.png"],
                               ["test/class_0/brighter.png", "train/class_0/img_0004.png"]]
    assert any("within max_leakage 20.0%" in line for line in lines.lines)
    stricter = raised.model_copy(update={"max_leakage": 0.1})
    assert phases.dataset_cache_key(stricter) != phases.dataset_cache_key(raised)  # no cached pass


def test_streamed_preparation_finds_the_same_leaks(bucket, tmp_path):
    config = RetrainConfig(dataset=str(leaky_folder(tmp_path / "leaky")), image_size=32, max_leakage=0.2,
                           stream_threshold_mb=0)
    ref = phases.download_dataset(config)
    assert ref.format == "tfrecord"
    assert (ref.leakage.test_images, ref.leakage.exact, ref.leakage.near) == (24, 3, 1)


def test_a_clean_dataset_records_no_leaks(bucket, sample_dataset):
    ref = phases.download_dataset(RetrainConfig(dataset=str(sample_dataset), image_size=32, max_leakage=0.0))
    assert ref.leakage.exact == ref.leakage.near == 0
    assert ref.leakage.test_images == sum(ref.counts["test"].values())


def test_aligned_patterns_in_many_colours_pass_at_the_defaults_and_planted_copies_do_not(bucket, tmp_path):
    """4 shapes drawn at one place in random colours: the grey hash alone called them copies of
    each other. At the default max_leakage they pass; with copies planted in test they fail."""
    import tensorflow as tf

    root = write_dataset(tmp_path / "patterns", classes=4, per_class=12, splits=("train", "val", "test"),
                         kind="patterns")
    ref = phases.download_dataset(RetrainConfig(dataset=str(root), image_size=32))
    assert (ref.leakage.exact, ref.leakage.near, ref.leakage.test_images) == (0, 0, 48)

    for index in range(3):  # 3 of 51 test images are brighter copies of training images: 5.9%
        original = root / "train" / "class_1" / f"img_{2 * index:04d}.png"
        pixels = tf.io.decode_png(original.read_bytes()).numpy()
        brighter = np.clip(pixels.astype(int) + 10, 0, 255).astype(np.uint8)
        (root / "test" / "class_1" / f"planted_{index}.png").write_bytes(tf.io.encode_png(brighter).numpy())
    with pytest.raises(DatasetError, match=r"3 of 51 test images \(5.9%\) duplicate training images: "
                       r"0 exact, 3 near, .*test/class_1/planted_0.png ~ train/class_1/img_0000.png"):
        phases.download_dataset(RetrainConfig(dataset=str(root), image_size=32))
