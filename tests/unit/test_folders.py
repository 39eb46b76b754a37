"""Folder layout, fingerprints and image decoding (plain files, no servers)."""

import numpy as np
import pytest

from transferflow.data import decode_images, fingerprint_folder, scan_folder
from transferflow.devstack.samples import write_dataset
from transferflow.errors import DatasetError


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


def test_scan_looks_inside_a_single_wrapping_folder_for_splits(tmp_path):
    """`tar -czf shapes.tar.gz -C parent shapes` with shapes/train/ and shapes/test/."""
    inner = write_dataset(tmp_path / "d" / "shapes", classes=2, per_class=2, splits=("train", "test"))
    wrapped = scan_folder(tmp_path / "d")
    assert wrapped.class_names == ["class_0", "class_1"]
    assert {split: len(files) for split, files in wrapped.files.items()} == {"train": 4, "test": 4}
    assert fingerprint_folder(wrapped) == fingerprint_folder(scan_folder(inner))  # the wrapper is not data


def test_wrapped_splits_without_train_are_named(tmp_path):
    write_dataset(tmp_path / "d" / "shapes", classes=2, per_class=1, splits=("val", "test"))
    with pytest.raises(DatasetError, match=r"dataset wrapped.tgz/shapes has val, test/ but no train/ folder"):
        scan_folder(tmp_path / "d", label="wrapped.tgz")


def test_dangling_symlink_is_counted_and_logged(tiny, tmp_path, caplog):
    (tiny / "class_1" / "zz_gone.png").symlink_to(tmp_path / "deleted.png")
    caplog.set_level("WARNING")
    scan = scan_folder(tiny, label="s3://b/d/")
    assert scan.unreadable == [tiny / "class_1" / "zz_gone.png"]
    assert len(scan.files["train"]) == 8 and scan.ignored == 0
    assert ("dataset s3://b/d/: skipped 1 unreadable files (symlinks whose target is missing): "
            "class_1/zz_gone.png") in caplog.text


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


def bmp_bytes(height: int, width: int, rgb: tuple[int, int, int]) -> bytes:
    """An uncompressed 24-bit BMP (TensorFlow decodes BMP but cannot write it)."""
    import struct

    row = bytes(rgb[::-1]) * width
    row += b"\0" * (-len(row) % 4)
    pixels = row * height
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


# A 1x1 GIF whose only pixel is palette entry 0: (200, 100, 50).
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xc8\x64\x32\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def test_every_supported_format_decodes_to_rgb(tmp_path):
    import tensorflow as tf

    files = {
        "gray.png": tf.io.encode_png(np.full((40, 50, 1), 128, np.uint8)).numpy(),
        "rgba.png": tf.io.encode_png(np.full((20, 20, 4), 200, np.uint8)).numpy(),
        "red.jpg": tf.io.encode_jpeg(np.tile(np.array([220, 30, 30], np.uint8), (64, 64, 1))).numpy(),
        "blue.bmp": bmp_bytes(10, 12, (10, 20, 230)),
        "orange.gif": GIF,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    decoded = decode_images([tmp_path / name for name in files], 32)
    assert decoded.bad == [] and decoded.images.shape == (5, 32, 32, 3) and decoded.images.dtype == np.uint8
    means = decoded.images.reshape(5, -1, 3).mean(axis=1).round()
    np.testing.assert_allclose(means, [[128] * 3, [200] * 3, [220, 30, 30], [10, 20, 230], [200, 100, 50]],
                               atol=3)


def test_large_jpegs_decoded_at_reduced_scale_match_a_full_decode(tmp_path):
    """DCT scaling (1/8 here) must give the picture a full decode + antialiased resize gives."""
    import tensorflow as tf

    from transferflow.devstack.samples import sample_image

    rng = np.random.default_rng(0)
    big = tf.image.resize(sample_image(1, 32, rng)[None].astype("float32"), (512, 384)).numpy()[0]
    path = tmp_path / "big.jpg"
    path.write_bytes(tf.io.encode_jpeg(big.astype(np.uint8), quality=95).numpy())
    reference = tf.image.resize(tf.io.decode_jpeg(path.read_bytes(), channels=3), (32, 32), antialias=True)
    decoded = decode_images([path], 32).images[0].astype(float)
    assert np.abs(decoded - reference.numpy()).mean() < 4  # of 255: the same picture


def test_corrupt_and_truncated_images_are_reported_not_fatal(tmp_path):
    import tensorflow as tf

    good = tf.io.encode_jpeg(np.full((40, 40, 3), 90, np.uint8)).numpy()
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "noise.jpg").write_bytes(b"definitely not a jpeg")
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [tmp_path / n for n in ("noise.jpg", "good.jpg", "cut.jpg", "empty.png")]
    decoded = decode_images(paths, 32)
    assert decoded.bad == [0, 2, 3]
    assert decoded.images.shape == (1, 32, 32, 3) and int(decoded.images.mean()) == 90
