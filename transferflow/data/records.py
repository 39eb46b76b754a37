"""Prepared datasets too large for memory: sharded TFRecord files, streamed by tf.data.

Each split is written as `<split>-NNNNN.tfrecord` shards of at most SHARD_BYTES, holding
tf.train.Examples with the raw uint8 pixels and the label, plus `<split>-labels.npy` (the
labels alone, small, for class counts and class weights). Training reads the shards from
the local cache with parallel interleave and parse, a bounded shuffle buffer and prefetch,
so memory stays flat however many images there are. The same shards hold other arrays too
(a StreamSplit with `shape` and `dtype`): the backbone's cached activations (training/activations.py).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferflow import localcache, storage

log = logging.getLogger(__name__)

SHARD_BYTES = int(os.environ.get("TRANSFERFLOW_SHARD_BYTES", 256 << 20))
SHUFFLE_BYTES = 128 << 20  # the shuffle buffer holds at most this much decoded image data


@dataclass
class StreamSplit:
    """One split of a streamed dataset: its shards (local paths once fetched) and labels."""

    shards: list[str]  # s3:// URIs
    labels: np.ndarray
    image_size: int
    shape: tuple[int, ...] | None = None  # of one row, when not an image (size, size, 3)
    dtype: str = "uint8"

    def __len__(self) -> int:
        return len(self.labels)

    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape) if self.shape else (self.image_size, self.image_size, 3)

    def shuffle_buffer(self) -> int:
        """Rows in the shuffle buffer: bounded in bytes, so memory does not grow with the data."""
        row_bytes = int(np.prod(self.row_shape())) * np.dtype(self.dtype).itemsize
        return min(len(self), max(1024, SHUFFLE_BYTES // row_bytes))

    def local_shards(self) -> list[str]:
        """The shards in the local cache (downloaded once, reused while their ETag holds)."""
        return [str(localcache.cached_download(uri)) for uri in self.shards]

    def dataset(self, batch_size: int, shuffle: bool, seed: int):
        """Batches of (float32 pixels, int32 label), streamed from the shards: in order, or shuffled
        as the first training epoch."""
        import tensorflow as tf

        if shuffle:
            return self.epoch_batches(batch_size, seed, 0).prefetch(tf.data.AUTOTUNE)
        files = tf.data.Dataset.from_tensor_slices(self.local_shards())
        records = tf.data.TFRecordDataset(files, buffer_size=8 << 20)  # read ahead in the background
        return self._batches(records, batch_size).prefetch(tf.data.AUTOTUNE)

    def epoch_batches(self, batch_size: int, seed: int, epoch, shards: list[str] | None = None):
        """One training epoch: shard order shuffled, several shards read at once, records mixed in a
        bounded buffer. Every random choice is seeded from (seed, epoch) and the reads are
        deterministic, so with the same global seed (fit_phase sets it to `seed`) the same epoch
        gives the same order in any process: a resumed run skips exactly the batches it saw.

        `shards`: the local shard paths, fetched beforehand by a caller that builds epochs inside
        a traced function (tf.data's flat_map), where fetching would make autograph try to
        convert the S3 client's code."""
        import tensorflow as tf

        epoch_seed = tf.constant(seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)
        files = tf.data.Dataset.from_tensor_slices(shards if shards is not None else self.local_shards())
        files = files.shuffle(len(self.shards), seed=epoch_seed, reshuffle_each_iteration=False)
        records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(self.shards)),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        records = records.shuffle(self.shuffle_buffer(), seed=epoch_seed, reshuffle_each_iteration=False)
        return self._batches(records, batch_size)

    def _batches(self, records, batch_size: int):
        import tensorflow as tf

        size, shape, dtype = self.image_size, self.row_shape(), self.dtype
        records = records.apply(tf.data.experimental.assert_cardinality(len(self)))  # Keras knows the steps
        parsed = records.map(lambda r: parse_record(r, size, shape, dtype),
                             num_parallel_calls=tf.data.AUTOTUNE)
        return parsed.batch(batch_size)


def parse_record(record, size: int, shape: tuple[int, ...] | None = None, dtype: str = "uint8"):
    """One serialized example as (float32 pixels, int32 label), as training and features read it;
    with `shape` and `dtype`, a row of another array (cached activations) as float32."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string),
                                                 "label": tf.io.FixedLenFeature([], tf.int64)})
    row = tf.reshape(tf.io.decode_raw(parsed["image"], tf.dtypes.as_dtype(dtype)), shape or (size, size, 3))
    return tf.cast(row, tf.float32), tf.cast(parsed["label"], tf.int32)


def write_split(chunks: Iterable[tuple[np.ndarray, np.ndarray]], bucket: str, prefix: str, split: str,
                logger=log, on_shard: Callable[[Path, str], None] | None = None
                ) -> tuple[list[str], np.ndarray]:
    """Write (images, labels) chunks as shards under s3://bucket/prefix/; returns the shard URIs
    and all labels. Only one shard is held on local disk at a time, and one chunk in memory.
    `on_shard(path, uri)` sees each shard's local file once it is uploaded (to hash it, say)."""
    import tensorflow as tf

    uris, labels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        writer, path, written = None, None, 0
        for images, chunk_labels in chunks:
            for image, label in zip(images, chunk_labels, strict=True):
                if writer is None:
                    path = Path(tmp) / f"{split}-{len(uris):05d}.tfrecord"
                    writer, written = tf.io.TFRecordWriter(str(path)), 0
                writer.write(_example(image, int(label)))
                written += image.nbytes
                if written >= SHARD_BYTES:
                    writer.close()
                    uris.append(_upload(path, bucket, prefix, on_shard))
                    writer = None
            labels.append(chunk_labels)
        if writer is not None:
            writer.close()
            uris.append(_upload(path, bucket, prefix, on_shard))
    all_labels = np.concatenate(labels).astype(np.int32) if labels else np.zeros(0, np.int32)
    buffer = io.BytesIO()
    np.save(buffer, all_labels, allow_pickle=False)
    storage.put_bytes(bucket, f"{prefix}/{split}-labels.npy", buffer.getvalue(), "application/octet-stream")
    logger.info("wrote %s: %d images in %d shards", split, len(all_labels), len(uris))
    return uris, all_labels


def _example(image: np.ndarray, label: int) -> bytes:
    import tensorflow as tf

    return tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
    })).SerializeToString()


def _upload(path: Path, bucket: str, prefix: str, on_shard=None) -> str:
    key = f"{prefix}/{path.name}"
    storage.upload_file(path, bucket, key)
    if on_shard is not None:
        on_shard(path, f"s3://{bucket}/{key}")  # it may keep the file (localcache.keep_uploaded)
    path.unlink(missing_ok=True)
    return f"s3://{bucket}/{key}"


def read_labels(bucket: str, prefix: str, split: str) -> np.ndarray:
    path = localcache.cached_download(f"s3://{bucket}/{prefix}/{split}-labels.npy")
    return np.load(path, allow_pickle=False)


def chunked(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def chunk_images(image_size: int, budget: int = 64 << 20) -> int:
    """Images decoded at a time when streaming: about `budget` bytes of pixels."""
    return max(64, budget // (image_size**2 * 3))


def estimated_bytes(images: int, image_size: int) -> int:
    return images * image_size * image_size * 3

