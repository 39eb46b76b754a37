"""The Registry: one object over a bucket, its methods grouped by concern in the mixins."""

from __future__ import annotations

from pathlib import Path

from transferflow import localcache, storage
from transferflow.registry import compare
from transferflow.registry.aliases import AliasMoves
from transferflow.registry.exports import ExportWrites
from transferflow.registry.golden import GoldenSets
from transferflow.registry.maintenance import Maintenance
from transferflow.registry.reads import Reads, artifact_reference
from transferflow.registry.references import ReferenceFiles
from transferflow.registry.versions import VersionWrites


class Registry(VersionWrites, ExportWrites, ReferenceFiles, AliasMoves, Maintenance, GoldenSets, Reads):
    """Versions (register, add_export, add_reference), aliases and their history (promote, rollback), removal
    (delete, gc), golden sets, and reads (resolve, metadata, pull) of the models in one bucket."""

    def __init__(self, bucket: str | None = None):
        self.bucket = bucket or storage.bucket_name()

    def diff(self, ref_a: str, ref_b: str) -> dict:
        """Two versions side by side: the parameters that differ, and the headline metrics."""
        labelled = []
        for reference in (ref_a, ref_b):
            name, version = self.resolve(reference)
            labelled.append((f"{name}:{version}", self.metadata(name, version) or {}))
        return compare.diff(labelled)


def verified_download(reference_or_uri: str) -> Path:
    """A registered model as a local file (cached) whose size and sha256 match its metadata.

    Takes 'name', 'name:3', 'name@alias' (in $TRANSFERFLOW_BUCKET) or a registry artifact
    URI s3://bucket/models/<name>/versions/<N>/model.keras.
    """
    if reference_or_uri.startswith("s3://"):
        bucket, reference = artifact_reference(reference_or_uri)
        registry = Registry(bucket)
    else:
        registry, reference = Registry(), reference_or_uri
    return registry.pull(reference, localcache.cache_dir() / "models" / registry.bucket)
