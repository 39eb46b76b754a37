"""Which image is in which split: a compact sidecar written next to a prepared dataset's manifest.

It lists every stored image, in the order of the prepared arrays or shards, with its name,
class, content digest and split, so that `datasets show --splits` can show membership without
decoding anything, and so that a registered version can keep the digests of the images it
trained, validated and was tested on (its `splits.json.gz`, beside model.keras).

    {"format": 1, "digest": "<what a digest is taken of>", "class_names": [...],
     "splits": {"train": {"names": [...], "labels": [...], "digests": [...], "borrowed": [positions]},
                "val": {...}, "test": {...}}}

A digest is the sha256 of the image file's bytes (folders, archives, s3:// prefixes), or of the
image's raw uint8 array at its native size (built-in array datasets such as CIFAR-10); it does not
depend on image_size, so a dataset prepared at two sizes has the same membership.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from transferflow import localcache, storage
from transferflow.errors import DatasetError

MEMBERSHIP_FORMAT = 1
MEMBERSHIP_SUFFIX = ".splits.json.gz"
DIGEST_OF = ("sha256 of the image file's bytes; for built-in array datasets, of the image's raw "
             "uint8 array at its native size")


class MembershipRef(BaseModel):
    """Where a prepared dataset's membership sidecar is, and what it must hash to."""

    uri: str
    sha256: str
    size: int
    images: int


@dataclass
class Members:
    """Gathered while a prepared dataset is written: per split, the images that were stored."""

    splits: dict[str, dict[str, list]] = field(default_factory=dict)

    def add(self, split: str, items, kept: np.ndarray) -> None:
        """Record the images at split positions `kept` (those that decoded), in stored order."""
        entry = self.splits.setdefault(split, {"names": [], "labels": [], "digests": [], "borrowed": []})
        offset = len(entry["names"])
        entry["names"] += [items.name(int(position)) for position in kept]
        entry["labels"] += np.asarray(items.labels)[kept].astype(int).tolist()
        entry["digests"] += (np.asarray(items.digests, dtype=object)[kept].tolist()
                             if items.digests is not None else [None] * len(kept))
        if items.borrowed is not None:
            entry["borrowed"] += [offset + i for i, position in enumerate(kept) if items.borrowed[position]]

    def upload(self, prepared_uri: str, class_names: list[str]) -> MembershipRef:
        document = {"format": MEMBERSHIP_FORMAT, "digest": DIGEST_OF, "class_names": class_names,
                    "splits": self.splits}
        body = gzip.compress(json.dumps(document, separators=(",", ":")).encode(), mtime=0)
        location = storage.parse_s3_uri(membership_uri(prepared_uri))
        storage.put_bytes(location.bucket, location.key, body, "application/gzip")
        return MembershipRef(uri=location.uri, sha256=hashlib.sha256(body).hexdigest(), size=len(body),
                             images=sum(len(entry["names"]) for entry in self.splits.values()))


def membership_uri(prepared_uri: str) -> str:
    """The sidecar's URI beside a prepared dataset's manifest (prefix/variant.splits.json.gz)."""
    return prepared_uri.rstrip("/").removesuffix(".npz") + MEMBERSHIP_SUFFIX


@dataclass(frozen=True)
class Membership:
    """A membership document, read back."""

    class_names: list[str]
    splits: dict[str, dict[str, list]]

    def digests(self, *splits: str) -> list[str]:
        """The digests of these splits, in stored order, one split after the other."""
        return [digest for split in splits for digest in self.splits.get(split, {}).get("digests", [])]

    def rows(self) -> list[dict]:
        """One row per image: name, class, digest, split, and whether it was borrowed."""
        rows = []
        for split, entry in self.splits.items():
            borrowed = set(entry.get("borrowed", []))
            rows += [{"name": name, "class": self.class_names[label], "digest": digest, "split": split,
                      "borrowed": position in borrowed}
                     for position, (name, label, digest) in enumerate(zip(
                         entry["names"], entry["labels"], entry["digests"], strict=True))]
        return rows


def parse_membership(body: bytes, source: str) -> Membership:
    try:
        document = json.loads(gzip.decompress(body))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{source} is not a membership document ({exc})") from None
    return Membership(document["class_names"], document["splits"])


def read_membership(ref: MembershipRef) -> Membership:
    """The sidecar of a prepared dataset, its bytes checked against the manifest's sha256."""
    path = localcache.cached_download(ref.uri)
    body = path.read_bytes()
    if hashlib.sha256(body).hexdigest() != ref.sha256:
        path.unlink(missing_ok=True)
        raise DatasetError(f"{ref.uri} does not match the sha256 its manifest records: it was changed; "
                           "prepare the dataset again (delete its manifest, or change a preparation option)")
    return parse_membership(body, ref.uri)
