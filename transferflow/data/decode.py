"""Decoding and resizing images, and reading their sizes from headers (image_size "auto")."""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
SIZE_SAMPLE = 500  # image headers read to choose image_size "auto"


@dataclass
class Decoded:
    """Decoded images, and the positions (in the input list) of files that could not be decoded."""

    images: np.ndarray  # uint8 (N - len(bad), size, size, 3), in input order
    bad: list[int]


def decode_images(paths: list[Path], image_size: int) -> Decoded:
    """Decode JPEG/PNG/BMP/GIF to RGB (grayscale and alpha converted) at image_size x image_size.

    A parallel tf.data pipeline. JPEGs are decoded at 1/2, 1/4 or 1/8 scale when the image is
    that much larger than the target (libjpeg's DCT scaling skips most of the work); the
    scale is read from each file's header up front, so every group of files runs one fixed
    decode op. Resizes antialias only when they still shrink by 2x or more. Corrupt or
    truncated files are skipped and reported, not fatal: the caller decides how many it
    tolerates.
    """
    import tensorflow as tf

    groups: dict[tuple, list[int]] = {}
    for index, path in enumerate(paths):
        groups.setdefault(_decode_plan(path, image_size), []).append(index)
    decoded = None
    for plan, indices in sorted(groups.items(), key=lambda item: str(item[0])):
        names = [str(paths[i]) for i in indices]
        part = tf.data.Dataset.from_tensor_slices((np.array(indices, np.int64), names))
        part = part.map(lambda i, name, plan=plan: (i, _decode_resize(tf.io.read_file(name), image_size,
                                                                      *plan)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
        decoded = part if decoded is None else decoded.concatenate(part)
    indices, batches = [], []
    if decoded is not None:
        for index, images in decoded.batch(64).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            indices.append(index)
            batches.append(images)
    if not batches:
        return Decoded(np.zeros((0, image_size, image_size, 3), np.uint8), list(range(len(paths))))
    found = np.concatenate(indices)
    images = np.concatenate(batches)[np.argsort(found, kind="stable")]  # back in input order
    return Decoded(images=images, bad=sorted(set(range(len(paths))) - set(found.tolist())))


def decode_image_bytes(contents: bytes, image_size: int) -> np.ndarray:
    """One encoded image (JPEG, PNG, BMP, GIF) as uint8 (image_size, image_size, 3), with the plan
    and ops decode_images uses on files, so a server's answer matches training's decoding.
    Corrupt or truncated bytes raise tf.errors.InvalidArgumentError."""
    return _bytes_decoder(image_size, *_decode_plan(contents, image_size))(contents).numpy()


@functools.cache
def _bytes_decoder(size: int, ratio: int, antialias: bool | None):
    """_decode_resize as one graph per plan: a call dispatches once instead of op by op (a third
    of the time on small images), and runs the graph ops decode_images' tf.data map runs."""
    import tensorflow as tf

    return tf.function(lambda contents: _decode_resize(contents, size, ratio, antialias),
                       input_signature=[tf.TensorSpec([], tf.string)])


def _decode_plan(source: Path | bytes, size: int) -> tuple[int, bool | None]:
    """(JPEG DCT scale, antialias) for a file or its bytes: scale 0 means "not a readable JPEG
    header: decode generically"; antialias None means "decide from the decoded size"."""
    shape = jpeg_shape(source)
    if shape is None:
        return 0, None
    smallest = min(shape)
    ratio = next((r for r in (8, 4, 2) if smallest >= size * r), 1)
    return ratio, smallest / ratio >= 2 * size


def _opened(source: Path | bytes) -> BinaryIO:
    """A file's handle, or its bytes already in memory (a server's upload) as one."""
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def jpeg_shape(source: Path | bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's SOF header (a file or its bytes), reading only the markers
    before it."""
    try:
        with _opened(source) as handle:
            if handle.read(2) != b"\xff\xd8":
                return None
            while True:
                marker = handle.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                length = int.from_bytes(handle.read(2), "big")
                if marker[1] in SOF_MARKERS:
                    header = handle.read(5)
                    return int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
                if length < 2:
                    return None
                handle.seek(length - 2, os.SEEK_CUR)
    except OSError:
        return None


def image_shape(source: Path | bytes) -> tuple[int, int] | None:
    """(height, width) from an image's header (JPEG, PNG, GIF, BMP; a file or its bytes), without
    decoding it."""
    shape = jpeg_shape(source)
    if shape is not None:
        return shape
    try:
        with _opened(source) as handle:
            head = handle.read(26)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
        return int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little")
    if head.startswith(b"BM") and len(head) >= 26:
        return (abs(int.from_bytes(head[22:26], "little", signed=True)),
                int.from_bytes(head[18:22], "little", signed=True))
    return None


def auto_image_size(shorter_sides: list[int], low: int, high: int) -> int:
    """image_size "auto": the median image's shorter side, rounded to a multiple of 32 (the
    backbones downsample by 32, so other sizes waste border pixels), within [low, high].

    Downscaling far below the photos throws away what pretrained filters need. Upscaling adds no
    detail, but `low` (BackboneSpec.auto_bounds: where the last block sees a 2x2 map) is worth it:
    below it, that block sees a single window, and its pretrained filters transfer worse. `high` is
    the backbone's native size: above it the cost grows quadratically for little gain. Without
    readable headers: `high`.
    """
    if not shorter_sides:
        return high
    median = float(np.median(shorter_sides))
    return int(min(high, max(low, 32 * max(1, round(median / 32)))))


def _decode_resize(contents, size: int, ratio: int, antialias: bool | None):
    import tensorflow as tf

    if ratio:  # fast integer IDCT and plain chroma upsampling: invisible once scaled down
        fast = dict(dct_method="INTEGER_FAST", fancy_upscaling=False) if ratio > 1 else {}
        image = tf.io.decode_jpeg(contents, channels=3, ratio=ratio, **fast)
    else:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    if antialias is None:
        shrink = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32) / size
        resized = tf.cond(shrink >= 2.0, lambda: tf.image.resize(image, (size, size), antialias=True),
                          lambda: tf.image.resize(image, (size, size)))
    else:
        resized = tf.image.resize(image, (size, size), antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def resize_array(images: np.ndarray, image_size: int, batch: int = 1024) -> np.ndarray:
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return images
    import tensorflow as tf

    parts = []
    for start in range(0, len(images), batch):
        resized = tf.image.resize(images[start:start + batch], (image_size, image_size), antialias=True)
        parts.append(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy())
    return np.concatenate(parts)
