"""Backbone features kept in object storage, so the frozen backbone runs once per dataset.

Features are keyed by everything that decides them: the prepared dataset (its fingerprint,
image size and splits), the backbone, its weights and the precision they were computed in.
A re-run with another head, learning rate or dropout finds them and skips the backbone.
They are stored as .npy shards of at most SHARD_BYTES each, with the manifest written
last: a reader sees all shards of a set or none.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from transferflow import localcache, storage
from transferflow.errors import StorageError

log = logging.getLogger(__name__)

SHARD_BYTES = 64 * 2**20
FORMAT = 1


@dataclass(frozen=True)
class FeatureKey:
    """What the pooled backbone features of a prepared dataset depend on."""

    dataset_uri: str  # the prepared dataset: fingerprint, image size and splits
    dataset_fingerprint: str
    backbone: str
    weights: str  # imagenet | none-seed<N> | sha256:<hex> of a weights file
    image_size: int
    precision: str
    keras: str  # a new Keras may build or initialise the backbone differently

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]

    def uri(self, bucket: str | None = None) -> str:
        return (f"s3://{bucket or storage.bucket_name()}/features/{self.dataset_fingerprint[:16]}/"
                f"{self.backbone}-{self.image_size}px-{self.digest()}")


def weights_identity(weights: str, weights_sha256: str | None, seed: int) -> str:
    """The weights as a cache key: random ones depend on the seed, files on their bytes."""
    if weights == "none":
        return f"none-seed{seed}"
    if weights_sha256:
        return f"sha256:{weights_sha256}"
    return weights


def load_features(key: FeatureKey) -> dict[str, np.ndarray] | None:
    """The stored features for `key`, or None when no complete set exists."""
    location = storage.parse_s3_uri(key.uri())
    found = storage.get_json(location.bucket, f"{location.key}/manifest.json")
    if found is None:
        return None
    manifest = found[0]
    if manifest.get("format") != FORMAT or manifest.get("key") != asdict(key):
        log.warning("ignoring features at %s: written for another key or format", location.uri)
        return None
    try:
        return {split: _read_split(location, entry) for split, entry in manifest["splits"].items()}
    except DamagedFeatures as exc:  # derived data: recompute rather than fail the run
        log.warning("ignoring damaged features at %s (%s); they will be recomputed", location.uri, exc)
        return None


class DamagedFeatures(Exception):
    """A stored shard does not match its manifest."""


def _read_split(location: storage.S3Location, entry: dict) -> np.ndarray:
    parts = []
    for shard in entry["shards"]:
        uri = f"s3://{location.bucket}/{location.key}/{shard['name']}"
        try:
            path = localcache.cached_download(uri)
        except StorageError as exc:
            raise DamagedFeatures(f"{shard['name']}: {exc}") from None
        with localcache.locked(path):  # checked and read while no other process replaces or removes it
            if storage.sha256_file(path) != shard["sha256"]:
                path.unlink()
                raise DamagedFeatures(f"{shard['name']} does not match the manifest's sha256")
            parts.append(np.load(path, allow_pickle=False))
    array = np.concatenate(parts) if parts else np.zeros((0, entry["dim"]), np.float32)
    if array.shape != (entry["rows"], entry["dim"]):
        raise DamagedFeatures(f"shape {array.shape}, the manifest says {(entry['rows'], entry['dim'])}")
    return array


def save_features(key: FeatureKey, features: dict[str, np.ndarray]) -> str:
    """Upload every split's shards, then the manifest; returns the features' URI."""
    location = storage.parse_s3_uri(key.uri())
    splits = {split: _write_split(location, split, np.ascontiguousarray(array, np.float32))
              for split, array in features.items()}
    storage.put_json(location.bucket, f"{location.key}/manifest.json",
                     {"format": FORMAT, "key": asdict(key), "splits": splits})
    return location.uri


def _write_split(location: storage.S3Location, split: str, array: np.ndarray) -> dict:
    dim = int(array.shape[1])
    rows_per_shard = max(1, SHARD_BYTES // (4 * dim))
    shards = []
    for index, start in enumerate(range(0, len(array), rows_per_shard)):
        buffer = io.BytesIO()
        np.save(buffer, array[start:start + rows_per_shard], allow_pickle=False)
        body = buffer.getvalue()
        name = f"{split}-{index:05d}.npy"
        storage.put_bytes(location.bucket, f"{location.key}/{name}", body, "application/octet-stream")
        shards.append({"name": name, "rows": min(rows_per_shard, len(array) - start),
                       "sha256": hashlib.sha256(body).hexdigest()})
    return {"rows": int(len(array)), "dim": dim, "shards": shards}
