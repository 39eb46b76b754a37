"""Folder layout, fingerprints and image decoding (plain files, no servers)."""

import numpy as np
import pytest

from transferflow.data import decode_images, fingerprint_folder, scan_folder
from transferflow.errors import DatasetError
from transferflow.samples import write_dataset


@pytest.fixture
def tiny(tmp_path):
    return write_dataset(tmp_path / "d", classes=2, per_class=4)


def test_scan_finds_classes_and_ignores_other_files(tiny):
    (tiny / "class_0" / "notes.txt").write_text("not an image")
    scan = scan_folder(tiny)
    assert scan.class_names == ["class_0", "class_1"]
    assert len(scan.files["train"]) == 8
    assert scan.ignored == 1


def test_scan_reads_train_val_test_layout(tmp_path):
    root = write_dataset(tmp_path / "d", classes=2, per_class=3, splits=("train", "val", "test"))
    scan = scan_folder(root)
    assert set(scan.files) == {"train", "val", "test"}


def test_scan_looks_inside_a_single_wrapping_folder(tmp_path):
    write_dataset(tmp_path / "d" / "flowers", classes=2, per_class=2)
    assert scan_folder(tmp_path / "d").class_names == ["class_0", "class_1"]


def test_fingerprint_follows_content(tiny):
    before = fingerprint_folder(scan_folder(tiny))
    assert before == fingerprint_folder(scan_folder(tiny))
    victim = sorted((tiny / "class_1").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert fingerprint_folder(scan_folder(tiny)) != before


def test_fingerprint_follows_the_file_list(tiny):
    before = fingerprint_folder(scan_folder(tiny))
    victim = sorted((tiny / "class_1").iterdir())[0]
    victim.rename(victim.with_name("renamed" + victim.suffix))
    assert fingerprint_folder(scan_folder(tiny)) != before


def test_empty_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty: it needs one subfolder per class"):
        scan_folder(tmp_path / "empty")


def test_single_class_is_a_clear_error(tmp_path):
    root = write_dataset(tmp_path / "d", classes=1, per_class=3)
    (root / "stray.txt").write_text("x")
    with pytest.raises(DatasetError, match="single class.*at least 2 class folders"):
        scan_folder(root)


def test_class_folder_without_images_is_named(tiny):
    (tiny / "class_9").mkdir()
    with pytest.raises(DatasetError, match=r"\['class_9'\] have no images"):
        scan_folder(tiny)


def test_val_class_missing_from_train_is_named(tmp_path):
    root = write_dataset(tmp_path / "d", classes=2, per_class=2, splits=("train", "val"))
    (root / "val" / "ghost").mkdir()
    (root / "val" / "ghost" / "a.png").write_bytes((root / "val/class_0/img_0000.png").read_bytes())
    with pytest.raises(DatasetError, match=r"val/ has classes \['ghost'\]"):
        scan_folder(root)


def test_decode_resizes_and_converts_to_rgb(tmp_path):
    import tensorflow as tf

    gray = tf.io.encode_png(np.full((40, 50, 1), 128, np.uint8)).numpy()
    rgba = tf.io.encode_png(np.full((20, 20, 4), 200, np.uint8)).numpy()
    (tmp_path / "g.png").write_bytes(gray)
    (tmp_path / "a.png").write_bytes(rgba)
    images = decode_images([tmp_path / "g.png", tmp_path / "a.png"], 32)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert int(images[0].mean()) == 128 and int(images[1].mean()) == 200


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg is unreadable"):
        decode_images([bad], 32)
