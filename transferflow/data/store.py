"""Prepared datasets in object storage: the manifest (DatasetRef), the arrays or shards,
and loading them back."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from transferflow import localcache, storage
from transferflow.data import records
from transferflow.data.decode import Decoded
from transferflow.data.layout import SPLITS
from transferflow.data.leakage import HashBook, LeakageReport
from transferflow.data.membership import Members, MembershipRef
from transferflow.data.splits import Items, class_counts
from transferflow.errors import DatasetError

STREAMED_SUFFIX = "-tfrecord"
PREPARED_FORMAT = 4  # bump when the prepared layout changes, so old caches are not reused
# 4: carved splits drawn from each image's content digest (stable as data grows), membership sidecar


class DatasetRef(BaseModel):
    """A prepared dataset in object storage: what tasks pass to each other."""

    name: str
    source: str
    fingerprint: str
    uri: str
    class_names: list[str]
    image_size: int
    split_origin: dict[str, str]  # split -> "given" | "carved"
    counts: dict[str, dict[str, int]]  # split -> class -> images
    format: str = "npz"  # npz: one file, loaded into memory; tfrecord: shards, streamed
    shards: dict[str, list[str]] = {}  # tfrecord: split -> shard URIs
    leakage: LeakageReport | None = None  # test images duplicating train ones; None: prepared before
    extra: dict | None = None  # --extra-data: its source, fingerprint and images (data.extra), if any
    membership: MembershipRef | None = None  # every image's split and digest; None: prepared before format 4
    created: str | None = None  # when it was prepared (UTC, microseconds): the newest of a source's copies


@dataclass
class PreparedDataset:
    """Decoded, resized uint8 images (N, size, size, 3) and int labels per split."""

    class_names: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    def save(self, path: Path) -> None:
        arrays = {f"{s}_{part}": arr for s, (x, y) in self.splits.items()
                  for part, arr in (("x", x), ("y", y))}
        np.savez(path, class_names=np.array(self.class_names), **arrays)

    @classmethod
    def load(cls, path: Path) -> PreparedDataset:
        with np.load(path, allow_pickle=False) as npz:
            return cls([str(n) for n in npz["class_names"]],
                       {s: (npz[f"{s}_x"], npz[f"{s}_y"]) for s in SPLITS})

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: class_counts(y, self.class_names) for s, (_, y) in self.splits.items()}


@dataclass
class Bad:
    """Images that failed to decode, by name."""

    names: list[str] = field(default_factory=list)

    def add(self, items: Items, decoded: Decoded, positions: np.ndarray) -> np.ndarray:
        """Record the failures of one load; returns the labels of the images that did decode."""
        self.names += [items.name(int(positions[i])) for i in decoded.bad]
        return np.delete(items.labels[positions], decoded.bad)

    def check(self, total: int, limit: float, source: str, logger) -> None:
        """Skip a few corrupt files with a count in the log; fail when more than `limit` are bad."""
        if not self.names:
            return
        shown, more = self.names[:5], f" and {len(self.names) - 5} more" if len(self.names) > 5 else ""
        if len(self.names) > limit * total:
            raise DatasetError(
                f"dataset {source}: {len(self.names)} of {total} images ({len(self.names) / total:.1%}) "
                f"are corrupt or unreadable, above the limit of {limit:.1%}: {', '.join(shown)}{more}. "
                "Replace or delete them, or raise max_bad_image_fraction.")
        logger.warning("skipped %d corrupt or unreadable images of %d: %s%s", len(self.names), total,
                       ", ".join(shown), more)


@dataclass
class Books:
    """What is gathered while a prepared dataset is written, besides the images themselves."""

    bad: Bad
    hashes: HashBook = field(default_factory=HashBook)  # for the leakage check
    members: Members = field(default_factory=Members)  # for the membership sidecar


def _loaded(items: Items, positions: np.ndarray, split: str, books: Books):
    """Decode the images at `positions`: (images, labels) of those that decoded, failures recorded
    in `books.bad`, hashes and membership of the others in `books`."""
    decoded = items.load(positions)
    labels = books.bad.add(items, decoded, positions)
    kept = np.delete(positions, decoded.bad)
    books.hashes.add(split, decoded.images, kept, items.name)
    books.members.add(split, items, kept)
    return decoded.images, labels


def write_npz(ref: DatasetRef, splits: dict[str, Items], bad: Bad) -> DatasetRef:
    """Decode every image into one .npz at ref.uri (its bucket is in the URI)."""
    arrays, books = {}, Books(bad)
    for split, items in splits.items():
        arrays[split] = _loaded(items, np.arange(len(items.labels)), split, books)
    prepared = PreparedDataset(ref.class_names, arrays)
    target = storage.parse_s3_uri(ref.uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prepared.npz"
        prepared.save(path)
        storage.upload_file(path, target.bucket, target.key)
    return ref.model_copy(update={"counts": prepared.counts(), "leakage": books.hashes.report(),
                                  "membership": books.members.upload(ref.uri, ref.class_names)})


def write_stream(ref: DatasetRef, splits: dict[str, Items], bad: Bad, bucket: str, logger) -> DatasetRef:
    """Decode chunk by chunk into shards: memory holds one chunk, whatever the dataset's size."""
    prefix = storage.parse_s3_uri(ref.uri).key.rstrip("/")
    shards, counts, books = {}, {}, Books(bad)
    for split, items in splits.items():
        def chunks(items=items, split=split):
            chunk = records.chunk_images(ref.image_size)
            for positions in records.chunked(np.arange(len(items.labels)), chunk):
                yield _loaded(items, positions, split, books)

        shards[split], labels = records.write_split(chunks(), bucket, prefix, split, logger)
        counts[split] = class_counts(labels, ref.class_names)
    return ref.model_copy(update={"counts": counts, "shards": shards, "leakage": books.hashes.report(),
                                  "membership": books.members.upload(ref.uri, ref.class_names)})


def ref_for(prepared_uri: str) -> DatasetRef:
    """The manifest of a prepared dataset, from the URI recorded in a model's metadata."""
    location = storage.parse_s3_uri(prepared_uri.rstrip("/").removesuffix(".npz") + ".json")
    found = storage.get_json(location.bucket, location.key)
    if found is None:
        raise DatasetError(f"prepared dataset {prepared_uri} has no manifest at {location.uri}: it was "
                           "deleted; re-run the dataset stage to prepare it again")
    return DatasetRef.model_validate(found[0])


def load_prepared(ref: DatasetRef) -> PreparedDataset:
    """The prepared splits: arrays in memory (npz), or streams over cached shards (tfrecord)."""
    if ref.format == "tfrecord":
        location = storage.parse_s3_uri(ref.uri)
        prefix = location.key.rstrip("/")
        return PreparedDataset(ref.class_names, {
            split: records.StreamSplit(uris, records.read_labels(location.bucket, prefix, split),
                                       ref.image_size)
            for split, uris in ref.shards.items()})
    return PreparedDataset.load(localcache.cached_download(ref.uri))


def total_images(counts: dict[str, dict[str, int]]) -> int:
    """Images over every split and class of a prepared dataset's counts."""
    return sum(sum(per_class.values()) for per_class in counts.values())


def split_sizes(counts: dict[str, dict[str, int]]) -> str:
    """'train 84, val 18, test 18'."""
    return ", ".join(f"{split} {sum(per_class.values())}" for split, per_class in counts.items())
