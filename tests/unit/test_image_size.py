"""image_size "auto": the size comes from the images' headers, within the backbone's bounds."""

import numpy as np
import pytest

from transferflow.data import auto_image_size, image_shape


@pytest.mark.parametrize("sides, low, high, expected", [
    ([32] * 10, 32, 224, 32),             # CIFAR-like: stays at its own size
    ([28] * 10, 32, 224, 32),             # MNIST-like: the backbone's minimum
    ([100] * 9 + [2000], 32, 224, 96),    # the median, not the mean; rounded to 32
    ([333, 375, 500], 32, 224, 224),      # typical photos: capped at the native size
    ([375] * 5, 71, 299, 299),            # xception's native size
    ([40] * 5, 71, 299, 71),              # xception's minimum
    ([], 32, 224, 224),                   # no readable header: the native size
])
def test_auto_size_is_the_median_shorter_side_within_bounds(sides, low, high, expected):
    assert auto_image_size(sides, low, high) == expected


def test_image_headers_give_height_and_width_without_decoding(tmp_path):
    import tensorflow as tf

    pixels = np.zeros((30, 50, 3), np.uint8)
    (tmp_path / "a.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
    (tmp_path / "a.png").write_bytes(tf.io.encode_png(pixels).numpy())
    (tmp_path / "a.bmp").write_bytes(tf.io.encode_png(pixels).numpy()[:0] + _bmp_header(50, 30))
    (tmp_path / "a.gif").write_bytes(b"GIF89a" + (50).to_bytes(2, "little") + (30).to_bytes(2, "little"))
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for name in ("a.jpg", "a.png", "a.bmp", "a.gif"):
        assert image_shape(tmp_path / name) == (30, 50), name
    assert image_shape(tmp_path / "junk.jpg") is None


def _bmp_header(width: int, height: int) -> bytes:
    return (b"BM" + bytes(16) + width.to_bytes(4, "little") + height.to_bytes(4, "little", signed=True)
            + bytes(8))


def test_auto_upscales_photos_below_the_size_where_the_last_block_sees_a_2x2_map():
    from transferflow.training.backbones import BACKBONES, MIN_FINAL_MAP, get_spec

    assert get_spec("vgg16").auto_bounds() == (64, 224)
    assert get_spec("xception").auto_bounds() == (71, 299)  # its own minimum is higher
    for spec in BACKBONES.values():
        low, high = spec.auto_bounds()
        assert low // spec.total_stride >= MIN_FINAL_MAP and low >= spec.min_size and high == spec.native_size
    assert auto_image_size([32] * 10, *get_spec("vgg16").auto_bounds()) == 64  # CIFAR-sized photos
    assert auto_image_size([100] * 10, *get_spec("vgg16").auto_bounds()) == 96  # their own size
