"""What the dataset store holds: prepared datasets and mirrored sources (no TensorFlow needed)."""

from __future__ import annotations

from transferflow import storage
from transferflow.config import dataset_slug
from transferflow.data import mirror
from transferflow.errors import DatasetError


def prepared(bucket: str) -> list[dict]:
    """Every prepared dataset variant (its DatasetRef manifest), oldest name first.

    An image_size "auto" run also writes an "auto..." manifest naming the same copy as its sized
    one: the copy is listed once.
    """
    found: dict[str, dict] = {}
    for obj in storage.list_keys(bucket, "datasets/"):
        key = obj["Key"]
        if not key.endswith(".json") or key.startswith(mirror.INDEX_PREFIX + "/") or "/source/" in key:
            continue
        document = storage.get_json(bucket, key)
        if document is None or "fingerprint" not in document[0]:
            continue
        is_auto = key.rsplit("/", 1)[-1].startswith("auto")
        if is_auto and document[0]["uri"] in found:
            continue
        found[document[0]["uri"]] = {**document[0], "manifest": f"s3://{bucket}/{key}",
                                     "prepared_at": obj["LastModified"].isoformat(timespec="seconds")}
    return sorted(found.values(), key=lambda ref: (ref["name"], ref["prepared_at"]))


def describe(bucket: str, reference: str) -> dict:
    """A dataset by name (e.g. cifar10, shapes) or by the source URI it was prepared from."""
    slug = dataset_slug(reference)
    variants = [ref for ref in prepared(bucket) if ref["name"] == slug
                or ref["source"] == reference or ref["name"] == reference]
    fingerprints = {ref["fingerprint"] for ref in variants}
    sources = [entry for entry in mirror.entries(bucket)
               if entry["fingerprint"] in fingerprints or entry["source"] == reference]
    return {"reference": reference, "variants": variants, "mirrors": sources}


def membership(bucket: str, reference: str, fingerprint: str | None = None) -> dict:
    """Every image of a dataset's newest prepared variant (or of the one whose fingerprint starts
    with `fingerprint`): name, class, content digest, split, from its membership sidecar."""
    from transferflow.data.membership import MembershipRef, read_membership

    variants = [ref for ref in describe(bucket, reference)["variants"]
                if fingerprint is None or ref["fingerprint"].startswith(fingerprint)]
    if not variants:
        which = f" with fingerprint {fingerprint}…" if fingerprint else ""
        raise DatasetError(f"no prepared dataset {reference!r}{which} in s3://{bucket}: see `transferflow "
                           "datasets list`, or prepare it with `transferflow datasets prefetch`")
    listed = [ref for ref in variants if ref.get("membership")]
    if not listed:
        raise DatasetError(f"dataset {reference!r} was prepared before membership was recorded (its "
                           "splits were positional): prepare it again with `transferflow datasets "
                           "prefetch` to list them")
    newest = max(listed, key=lambda ref: (ref.get("created") or "", ref["prepared_at"]))
    rows = read_membership(MembershipRef.model_validate(newest["membership"])).rows()
    return {"name": newest["name"], "source": newest["source"], "fingerprint": newest["fingerprint"],
            "manifest": newest["manifest"], "prepared_at": newest["prepared_at"], "images": rows}
