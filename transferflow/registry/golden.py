"""A model's golden set: a pinned, fingerprinted evaluation dataset that every new version and
production are scored on, besides each run's own test split.

The document models/<name>/golden.json points at a copy of the images stored once under
golden/<name>/<fingerprint>/, so that the set cannot drift with its source.
"""

from __future__ import annotations

from transferflow import storage
from transferflow.registry.documents import Record, actor, now
from transferflow.registry.layout import check_name, golden_key


class GoldenSet(Record):
    name: str
    source: str  # what the user gave (credentials redacted)
    uri: str  # the stored copy: s3://<bucket>/golden/<name>/<fingerprint[:16]>/
    fingerprint: str
    classes: list[str]
    images: int
    set_at: str | None = None
    set_by: str | None = None


class GoldenSets:
    bucket: str

    def golden(self, name: str) -> GoldenSet | None:
        found = storage.get_json(self.bucket, golden_key(name))
        return GoldenSet.model_validate(found[0]) if found else None

    def set_golden(self, golden: GoldenSet) -> GoldenSet:
        """Point the model at a golden set whose copy is already stored (a plain overwrite: the
        document is written in one request, so readers see the old set or the new one)."""
        check_name(golden.name)
        stamped = golden.model_copy(update={"set_at": now(), "set_by": actor()})
        storage.put_json(self.bucket, golden_key(golden.name), stamped.document())
        return stamped

    def clear_golden(self, name: str) -> bool:
        """Remove the model's golden set document (its stored copy stays: older metadata names it)."""
        if self.golden(name) is None:
            return False
        storage.client().delete_object(Bucket=self.bucket, Key=golden_key(name))
        return True
