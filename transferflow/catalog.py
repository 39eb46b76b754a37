"""What the dataset store holds: prepared datasets and mirrored sources (no TensorFlow needed)."""

from __future__ import annotations

from transferflow import mirror, storage
from transferflow.config import dataset_slug


def prepared(bucket: str) -> list[dict]:
    """Every prepared dataset variant (its DatasetRef manifest), oldest name first."""
    found = []
    for obj in storage.list_keys(bucket, "datasets/"):
        key = obj["Key"]
        if not key.endswith(".json") or key.startswith(mirror.INDEX_PREFIX + "/") or "/source/" in key:
            continue
        document = storage.get_json(bucket, key)
        if document is not None and "fingerprint" in document[0]:
            found.append({**document[0], "manifest": f"s3://{bucket}/{key}",
                          "prepared_at": obj["LastModified"].isoformat(timespec="seconds")})
    return sorted(found, key=lambda ref: (ref["name"], ref["prepared_at"]))


def describe(bucket: str, reference: str) -> dict:
    """A dataset by name (e.g. cifar10, shapes) or by the source URI it was prepared from."""
    slug = dataset_slug(reference)
    variants = [ref for ref in prepared(bucket) if ref["name"] == slug
                or ref["source"] == reference or ref["name"] == reference]
    fingerprints = {ref["fingerprint"] for ref in variants}
    sources = [entry for entry in mirror.entries(bucket)
               if entry["fingerprint"] in fingerprints or entry["source"] == reference]
    return {"reference": reference, "variants": variants, "mirrors": sources}
