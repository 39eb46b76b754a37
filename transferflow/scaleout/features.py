"""Backbone features on Ray (engine ray): the frozen backbone runs over the prepared shards with
map_batches on every worker. The caller (training.local.head_features) stores the result in the feature
store under the key the local path uses, so a later local run, or another head, reuses it.

The extractor (preprocessing, frozen backbone, pooling: what the head sees) is built by the driver
as locally and shipped to the workers as a .keras file, so workers need neither the weights file
nor internet, and compute in the precision the key names. Each worker reads whole shards from
object storage with its own S3 settings (the KubeRay manifest takes them from a Secret); the
driver puts the rows back in shard and record order, so the features line up with the labels.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from transferflow import localcache
from transferflow.data import records
from transferflow.data.store import DatasetRef, load_prepared
from transferflow.errors import TransferflowError
from transferflow.scaleout.cluster import Session, actors_for, cluster_facts, describe, raise_unwrapped

log = logging.getLogger(__name__)


def head_features_on_ray(config, dataset: DatasetRef, key, classifier, data, plan,
                         logger=log) -> tuple[dict[str, np.ndarray], dict]:
    """training.local.head_features' `compute` for engine ray: the same features, keys and store,
    with the backbone run on every worker; the info holds the cluster's facts under "ray"."""
    features, facts = extract_on_ray(classifier, dataset, ("train", "val"),
                                     plan.global_batch(config.batch_size), config.num_workers,
                                     config.gpus_per_worker, logger)
    return features, {"ray": facts}


def extract_on_ray(classifier, dataset: DatasetRef, splits: tuple[str, ...], batch_size: int,
                   num_workers: int, gpus_per_worker: float = 0.0,
                   logger=log) -> tuple[dict[str, np.ndarray], dict]:
    """The pooled backbone output for each split's images, computed on the cluster, and the
    cluster's facts. A dataset in the in-memory format (prepared by engine local) has no shards
    to spread: it is computed here, as the local path does."""
    from transferflow.training.fit import extract_features

    if dataset.format != "tfrecord":
        logger.info("features: %s is in the in-memory format, not sharded: computed in this process",
                    dataset.uri)
        data = load_prepared(dataset)
        return extract_features(classifier, {name: data.splits[name] for name in splits}, batch_size), {}
    with Session(logger) as session:
        session.connect()
        facts = cluster_facts(num_workers, gpus_per_worker)
        started = time.monotonic()
        rows = [{"split": split, "shard": index, "uri": uri}
                for split in splits for index, uri in enumerate(dataset.shards.get(split, []))]
        parts = _run(rows, _extractor_bytes(classifier), dataset.image_size, batch_size,
                     actors_for(num_workers, len(rows)), gpus_per_worker)
        dim = int(classifier.get_layer("pool").output.shape[-1])
        features = {split: _joined(parts, split, dim, sum(dataset.counts.get(split, {}).values()))
                    for split in splits}
    facts["seconds"] = round(time.monotonic() - started, 2)
    logger.info("features on Ray: %s over %d shards on %s (%.1fs)",
                " + ".join(f"{len(array)} {split}" for split, array in features.items()), len(rows),
                describe(facts), facts["seconds"])
    return features, facts


def _extractor_bytes(classifier) -> bytes:
    """The driver's extractor (input -> pool) as a .keras file's bytes."""
    import keras

    extractor = keras.Model(classifier.input, classifier.get_layer("pool").output)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "extractor.keras"
        extractor.save(path)
        return path.read_bytes()


def _run(rows: list[dict], model: bytes, image_size: int, batch_size: int, workers: int,
         gpus_per_worker: float) -> dict[tuple[str, int], list[dict]]:
    """Run the job: one row per shard, one actor per worker; the output rows by (split, shard)."""
    import ray.data

    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows))).map_batches(
        ExtractShards, batch_size=1, batch_format="numpy", num_cpus=1, num_gpus=gpus_per_worker or None,
        fn_constructor_kwargs={"model": model, "image_size": image_size, "batch_size": batch_size},
        compute=ray.data.ActorPoolStrategy(size=workers))
    ds.context.execution_options.preserve_order = True
    parts: dict[tuple[str, int], list[dict]] = {}
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            keys = {(str(s), int(i)) for s, i in zip(batch["split"], batch["shard"], strict=True)}
            for split, shard in keys:
                chosen = (batch["split"] == split) & (batch["shard"] == shard)
                parts.setdefault((split, shard), []).append({"row": batch["row"][chosen],
                                                             "feature": batch["feature"][chosen]})
    except Exception as exc:  # a worker's error arrives wrapped by Ray
        raise_unwrapped(exc)
    return parts


def _joined(parts: dict[tuple[str, int], list[dict]], split: str, dim: int, expected: int) -> np.ndarray:
    """One split's features in the prepared order: shards in order, records in order within each."""
    arrays = []
    for shard in sorted(index for name, index in parts if name == split):
        rows = np.concatenate([part["row"] for part in parts[(split, shard)]])
        features = np.concatenate([part["feature"] for part in parts[(split, shard)]])
        arrays.append(features[np.argsort(rows, kind="stable")])
    joined = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, dim), np.float32)
    if len(joined) != expected:
        raise TransferflowError(f"features on Ray: {len(joined)} {split} rows came back for {expected} "
                                "images; compute them with engine local and report it")
    return joined


class ExtractShards:
    """The Ray Data UDF: the extractor loaded once per actor, run over whole shards."""

    def __init__(self, model: bytes, image_size: int, batch_size: int):
        import keras

        import transferflow.training.model  # noqa: F401 (registers the layers the .keras file names)

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "extractor.keras"
            path.write_bytes(model)
            self.model = keras.saving.load_model(path, compile=False)
        self.image_size, self.batch_size = image_size, batch_size

    def __call__(self, batch: dict) -> dict:
        outputs = [self._shard(str(split), int(shard), str(uri))
                   for split, shard, uri in zip(batch["split"], batch["shard"], batch["uri"], strict=True)]
        return {name: np.concatenate([output[name] for output in outputs]) for name in outputs[0]}

    def _shard(self, split: str, shard: int, uri: str) -> dict:
        import tensorflow as tf

        size = self.image_size
        images = tf.data.TFRecordDataset([str(localcache.cached_download(uri))]).map(
            lambda record: records.parse_record(record, size)).batch(self.batch_size)
        features = np.asarray(self.model.predict(images, verbose=0), np.float32)
        count = len(features)
        return {"split": np.full(count, split), "shard": np.full(count, shard, np.int64),
                "row": np.arange(count), "feature": features}
