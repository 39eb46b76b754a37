"""Fine-tuning on cached activations: the backbone's frozen bottom runs once, not every epoch.

With fine_tune_blocks below all, the bottom of the backbone stays frozen while its top fine-tunes,
and without augmentation every epoch would push the same images through the same frozen layers.
Instead, the output of the frozen bottom (the *cut*: the one tensor between it and the unfrozen top;
VGG16's block3_pool for the default 2 blocks) is computed once and the top trains on it. The top
is a model over the classifier's own layers, so training it trains the classifier: the model that
is staged and registered is the whole classifier (raw pixels in) with the fine-tuned weights.

Activations are kept in object storage next to the head's features and keyed like them (dataset
fingerprint, backbone, weights, image size, precision) plus the cut and the storage dtype, so a
retry, a resume or a re-run with other fine-tuning settings finds them. They are stored as float16
when every value fits in it (VGG16's do), else as float32. Size: rows x the cut's shape x 2 bytes;
for VGG16 cut after block3, N x (S/8)^2 x 256 x 2 bytes (1,444 photos at 64 px: 47 MB; 50,000 at
224 px: 20 GB). Up to stream_threshold_mb they are held in memory, above it streamed from sharded
TFRecord files (data.records), as a large prepared dataset is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from transferflow import localcache, storage
from transferflow.data import records
from transferflow.training.features import FeatureKey
from transferflow.training.model import BACKBONE_LAYER

log = logging.getLogger(__name__)

FORMAT = 1
STORAGE = "float16 when finite, else float32"
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class ActivationKey:
    """What the activations at a cut depend on: the features' key, the cut, how they are stored."""

    features: FeatureKey
    cut: str  # the layer whose output is cached
    storage: str = STORAGE

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def uri(self, bucket: str | None = None) -> str:
        f = self.features
        return (f"s3://{bucket or storage.bucket_name()}/features/{f.dataset_fingerprint[:16]}/"
                f"{f.backbone}-{f.image_size}px-{self.cut}-{self.digest()}")


@dataclass
class Activations:
    """The cached activations of train and val: arrays in memory, or records.StreamSplit streams."""

    train: object
    val: object
    dtype: str
    shape: tuple[int, ...]
    uri: str
    source: str  # computed | reused | handed over (computed by this process's head phase)
    extra: dict = field(default_factory=dict)

    def info(self) -> dict:
        return {"source": self.source, "uri": self.uri, "dtype": self.dtype, "shape": list(self.shape),
                "streamed": not isinstance(self.train, tuple), **self.extra}


# ---------------------------------------------------------------- the cut and the models around it

def find_cut(base: keras.Model, top_prefixes: tuple[str, ...]):
    """The one tensor through which everything the top blocks compute depends on the frozen bottom,
    or None: nothing is frozen below them, or several tensors cross over (a skip connection around
    the boundary). Only the layers of the top blocks count as top: layers in no block that depend
    only on frozen ones are frozen bottom too."""
    frozen, crossing = {}, {}
    for depth in sorted(base._nodes_by_depth, reverse=True):  # the graph's own nodes, inputs first
        for node in base._nodes_by_depth[depth]:
            inputs = node.input_tensors
            if not node.operation.name.startswith(top_prefixes) and all(id(t) in frozen for t in inputs):
                frozen.update((id(t), t) for t in node.output_tensors)
            else:
                crossing.update((id(t), t) for t in inputs if id(t) in frozen)
    crossing.update((id(t), t) for t in base.outputs if id(t) in frozen)
    if len(crossing) != 1:
        return None
    [tensor] = crossing.values()
    return None if any(tensor is t for t in base.inputs) else tensor


def cut_layer(tensor) -> str:
    return tensor._keras_history.operation.name


@dataclass
class SplitModels:
    """Models sharing the classifier's layers: pixels -> [pooled features, activations] (bottom),
    and activations -> class probabilities (top)."""

    bottom: keras.Model
    top: keras.Model
    cut: str
    shape: tuple[int, ...]


def split_classifier(classifier: keras.Model, cut) -> SplitModels:
    """The classifier cut in two at `cut` (a tensor of its backbone, from find_cut). Composed, the two
    compute what the classifier computes, with its very layers and weights."""
    base = classifier.get_layer(BACKBONE_LAYER)
    lower, upper = keras.Model(base.input, cut), keras.Model(cut, base.output)
    pool, head = classifier.get_layer("pool"), [classifier.get_layer(n) for n in
                                                 ("standardize", "dropout", "classifier")]
    images = keras.Input(classifier.input_shape[1:], name="image")
    activations = lower(classifier.get_layer("preprocess")(images), training=False)
    bottom = keras.Model(images, [pool(upper(activations, training=False)), activations])
    cached = keras.Input(tuple(cut.shape[1:]), name="activations")
    x = pool(upper(cached, training=False))  # training=False: BatchNorm stays in inference mode
    for layer in head:
        x = layer(x)
    return SplitModels(bottom, keras.Model(cached, x, name="top"), cut_layer(cut), tuple(cut.shape[1:]))


def row_bytes(shape: tuple[int, ...], dtype: str = "float16") -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


# ---------------------------------------------------------------- computing them

class Float16Overflow(Exception):
    """An activation does not fit in float16: they are stored as float32 instead."""


def as_stored(array: np.ndarray, dtype: str) -> np.ndarray:
    """float32 activations in the storage dtype; float16 only when every value fits."""
    if dtype == "float16":
        if np.abs(array).max(initial=0.0) > FLOAT16_MAX:
            raise Float16Overflow
        return array.astype(np.float16)
    return array.astype(np.float32)


def run_bottom(bottom: keras.Model, split, batch_size: int, dtype: str, chunk_rows: int):
    """Yield (pooled features, activations in `dtype`, labels) for a split, `chunk_rows` at a time."""
    from transferflow.training.fit import split_dataset

    pooled, acts, labels, held = [], [], [], 0
    for x, y in split_dataset(split, batch_size, False, 0):
        features, activations = bottom.predict_on_batch(x)
        pooled.append(np.asarray(features, np.float32))
        acts.append(as_stored(np.asarray(activations, np.float32), dtype))
        labels.append(np.asarray(y, np.int32))
        held += len(labels[-1])
        if held >= chunk_rows:
            yield np.concatenate(pooled), np.concatenate(acts), np.concatenate(labels)
            pooled, acts, labels, held = [], [], [], 0
    if labels:
        yield np.concatenate(pooled), np.concatenate(acts), np.concatenate(labels)


# ---------------------------------------------------------------- object storage

def manifest_key(location: storage.S3Location) -> str:
    return f"{location.key}/manifest.json"


def stored_manifest(key: ActivationKey) -> dict | None:
    location = storage.parse_s3_uri(key.uri())
    found = storage.get_json(location.bucket, manifest_key(location))
    if found is None:
        return None
    manifest = found[0]
    if manifest.get("format") != FORMAT or manifest.get("key") != _plain(key):
        log.warning("ignoring activations at %s: written for another key or format", location.uri)
        return None
    return manifest


def _plain(key: ActivationKey) -> dict:
    return json.loads(json.dumps(asdict(key)))


class Writer:
    """Writes activations as they are computed: TFRecord shards of each split, the labels, and the
    manifest last, so a reader sees a complete set or none."""

    def __init__(self, key: ActivationKey, shape: tuple[int, ...], dtype: str):
        self.key, self.shape, self.dtype = key, shape, dtype
        self.location = storage.parse_s3_uri(key.uri())
        self.splits: dict[str, dict] = {}

    def write(self, split: str, chunks, logger=log) -> None:
        hashes = {}

        def hashed(path: Path, uri: str) -> None:  # and kept in the local cache: training reads it
            hashes[uri] = storage.sha256_file(path)
            location = storage.parse_s3_uri(uri)
            localcache.keep_uploaded(path, location.bucket, location.key)

        uris, labels = records.write_split(chunks, self.location.bucket, self.location.key, split,
                                           logger, on_shard=hashed)
        shards = [{"uri": uri, "sha256": hashes[uri]} for uri in uris]
        self.splits[split] = {"rows": int(len(labels)), "shards": shards}

    def finish(self) -> str:
        storage.put_json(self.location.bucket, manifest_key(self.location),
                         {"format": FORMAT, "key": _plain(self.key), "dtype": self.dtype,
                          "shape": list(self.shape), "splits": self.splits})
        return self.location.uri


def write_arrays(key: ActivationKey, arrays: dict[str, tuple[np.ndarray, np.ndarray]], logger=log) -> str:
    """Store activations held in memory ({split: (activations, labels)})."""
    first = next(iter(arrays.values()))[0]
    writer = Writer(key, tuple(first.shape[1:]), str(first.dtype))
    for split, (acts, labels) in arrays.items():
        step = max(1, records.SHARD_BYTES // max(1, row_bytes(writer.shape, writer.dtype)))
        writer.write(split, ((acts[i:i + step], labels[i:i + step]) for i in range(0, len(labels), step)),
                     logger)
    return writer.finish()


def load(key: ActivationKey, manifest: dict, in_memory: bool):
    """The stored splits as (activations, labels) arrays, or as streams; shards checked first."""
    shape, dtype = tuple(manifest["shape"]), manifest["dtype"]
    splits = {}
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            path = localcache.cached_download(shard["uri"])
            if storage.sha256_file(path) != shard["sha256"]:
                path.unlink()
                log.warning("ignoring damaged activations at %s (%s does not match its manifest); they "
                            "will be recomputed", key.uri(), shard["uri"])
                return None
        location = storage.parse_s3_uri(key.uri())
        labels = records.read_labels(location.bucket, location.key, split)
        stream = records.StreamSplit([s["uri"] for s in entry["shards"]], labels, 0, shape, dtype)
        splits[split] = _in_memory(stream) if in_memory else stream
    return splits


def _in_memory(stream: records.StreamSplit) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    files = tf.data.TFRecordDataset(stream.local_shards(), buffer_size=8 << 20)
    shape, dtype = stream.row_shape(), tf.dtypes.as_dtype(stream.dtype)
    raw = files.map(lambda r: tf.reshape(tf.io.decode_raw(tf.io.parse_single_example(
        r, {"image": tf.io.FixedLenFeature([], tf.string)})["image"], dtype), shape),
        num_parallel_calls=tf.data.AUTOTUNE)
    arrays = [batch for batch in raw.batch(1024).as_numpy_iterator()]
    acts = np.concatenate(arrays) if arrays else np.zeros((0, *shape), stream.dtype)
    return acts, stream.labels


# ---------------------------------------------------------------- choosing, computing, finding them

def wanted_cut(config, classifier: keras.Model, spec) -> tuple[object | None, str]:
    """The cut to fine-tune above on cached activations (a tensor of the backbone), or None; and
    why, in words for the log."""
    end_to_end = "fine-tuning runs the whole backbone every epoch"
    if config.fine_tune_epochs == 0:
        return None, "no fine-tuning"
    if config.augment:
        return None, f"augmentation is on, so every epoch sees new images: {end_to_end}"
    if not config.cache_features:
        return None, f"cache_features is off: {end_to_end}"
    if config.engine != "local":
        return None, f"engine {config.engine}: {end_to_end}, on the cluster"
    if config.fine_tune_blocks == "all":
        return None, f"every block is fine-tuned, none is frozen: {end_to_end}"
    cut = find_cut(classifier.get_layer(BACKBONE_LAYER), spec.blocks[-config.fine_tune_blocks:])
    if cut is None:
        return None, (f"{spec.name}'s top {config.fine_tune_blocks} blocks meet its frozen bottom in more "
                      f"than one tensor: {end_to_end}")
    return cut, (f"the frozen bottom of {spec.name} (up to {cut_layer(cut)}) runs once: fine-tuning trains "
                 "the top blocks and the head on its cached output")


def in_memory(counts: dict[str, dict[str, int]], shape: tuple[int, ...], threshold_mb: int) -> bool:
    """Whether train + val activations (float16) fit under the dataset's streaming threshold."""
    rows = sum(sum(counts.get(split, {}).values()) for split in ("train", "val"))
    return rows * row_bytes(shape) <= threshold_mb * 2**20


def compute(key: ActivationKey, models: SplitModels, splits: dict, batch_size: int, memory: bool,
            logger=log, hand: bool = False) -> tuple[dict[str, np.ndarray], Activations, Future | None]:
    """Run the bottom once over each split: the pooled features (for the head) and the activations.
    In memory, the activations are stored by a background upload (returned: wait for it before the
    phase ends) and, with `hand`, kept for this process's fine-tuning phase; else they are written
    to storage as they are computed, and streamed from there."""
    try:
        return _compute(key, models, splits, batch_size, memory, "float16", logger, hand)
    except Float16Overflow:
        logger.info("activations at %s exceed float16's range: they are kept as float32", models.cut)
        return _compute(key, models, splits, batch_size, memory, "float32", logger, hand)


def _compute(key, models: SplitModels, splits: dict, batch_size: int, memory: bool, dtype: str, logger,
             hand: bool):
    features, arrays = {}, {}
    writer = None if memory else Writer(key, models.shape, dtype)
    chunk_rows = max(batch_size, records.SHARD_BYTES // row_bytes(models.shape, dtype))
    for split, data in splits.items():
        pooled = []
        chunks = _keeping_features(run_bottom(models.bottom, data, batch_size, dtype, chunk_rows), pooled)
        if memory:
            parts = list(chunks)
            arrays[split] = (np.concatenate([a for a, _ in parts]), np.concatenate([y for _, y in parts]))
        else:
            writer.write(split, chunks, logger)
        features[split] = np.concatenate(pooled)
    uri = key.uri()
    if not memory:
        writer.finish()
        streams = load(key, stored_manifest(key), in_memory=False)
        streamed = Activations(streams["train"], streams["val"], dtype, models.shape, uri, "computed")
        return features, streamed, None
    upload = _uploads.submit(_store_quietly, key, arrays, logger)
    if hand:
        hand_over(uri, arrays, upload)
    return features, Activations(arrays["train"], arrays["val"], dtype, models.shape, uri, "computed"), upload


def _keeping_features(parts, pooled: list):
    """(activations, labels) chunks for the writer; the pooled features go to `pooled`."""
    for feature, acts, labels in parts:
        pooled.append(feature)
        yield acts, labels


def _store_quietly(key: ActivationKey, arrays: dict, logger) -> None:
    """Store in the background; a failure costs only the reuse (they are derived data): a warning."""
    try:
        write_arrays(key, arrays, logger)
    except Exception as exc:  # noqa: BLE001 (any storage fault: the run goes on without the copy)
        logger.warning("could not store the activations at %s (%s): later runs will compute them again",
                       key.uri(), exc)


def for_fine_tune(key: ActivationKey, models: SplitModels, data, batch_size: int, memory: bool,
                  logger=log) -> tuple[Activations, Future | None]:
    """The activations of train and val: handed over by this process's head phase, else read from
    object storage, else computed (and stored)."""
    uri = key.uri()
    arrays = take(uri)
    if arrays is not None:
        return Activations(arrays["train"], arrays["val"], str(arrays["train"][0].dtype), models.shape, uri,
                           "handed over"), None
    manifest = stored_manifest(key)
    loaded = load(key, manifest, memory) if manifest is not None else None
    if loaded is not None:
        logger.info("reusing the activations at %s (same dataset, backbone, weights, size and cut)", uri)
        reused = Activations(loaded["train"], loaded["val"], manifest["dtype"], models.shape, uri, "reused")
        return reused, None
    splits = {name: data.splits[name] for name in ("train", "val")}
    _, activations, upload = compute(key, models, splits, batch_size, memory, logger)
    return activations, upload


# ---------------------------------------------------------------- handing over within a process

_uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferflow-activations")
_handed: dict[str, tuple[Future | None, dict]] = {}
_lock = threading.Lock()


def settle() -> None:
    """Wait for this process's background uploads of activations (in order: one thread)."""
    _uploads.submit(lambda: None).result()


def hand_over(uri: str, arrays: dict, upload: Future | None) -> None:
    """Keep activations this process computed (and is uploading) for its fine-tuning phase: the
    latest set only, so a process that runs many flows holds one set at most."""
    with _lock:
        _handed.clear()
        _handed[uri] = (upload, arrays)


def take(uri: str) -> dict | None:
    """Activations handed over by this process's head phase (its upload finished first)."""
    with _lock:
        upload, arrays = _handed.pop(uri, (None, None))
    if upload is not None:
        upload.result()
    return arrays
