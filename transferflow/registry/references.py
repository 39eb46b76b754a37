"""A version's monitoring reference: stored inside the version, listed in its metadata.json with
its size and sha256, and read back only once those match.

New versions get it at registration, copied and verified before metadata.json like every other
file of theirs. A version registered before references existed gets it later, the way an export
is added: uploaded under a name of its content, read back and checked, then listed by a
conditional rewrite of metadata.json (IfMatch), so that a concurrent change is never overwritten.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry.documents import now
from transferflow.registry.layout import ModelVersion
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)


class ReferenceFiles:
    bucket: str

    def reference_entry(self, name: str, version: int) -> dict | None:
        """The metadata entry of the version's reference (file, sha256, size...), or None."""
        found = storage.get_json(self.bucket, ModelVersion(name, version, self.bucket).metadata_key)
        if found is None:
            raise RegistryError(f"{name}:{version} does not exist; see `transferflow models list`")
        entry = (found[0].get("monitoring") or {}).get("reference")
        return entry if isinstance(entry, dict) and "file" in entry else None

    def reference_bytes(self, name: str, version: int) -> bytes | None:
        """The reference document's bytes, checked against the size and sha256 its metadata lists;
        None when the version has no reference."""
        entry = self.reference_entry(name, version)
        if entry is None:
            return None
        key = ModelVersion(name, version, self.bucket).key(entry["file"])
        with tempfile.TemporaryDirectory() as tmp:
            path = storage.download_file(self.bucket, key, Path(tmp) / "reference.json")
            body = path.read_bytes()
            digest = storage.sha256_file(path)
        if (digest, len(body)) != (entry["sha256"], entry["size"]):
            raise RegistryError(f"the monitoring reference of {name}:{version} (s3://{self.bucket}/{key}) "
                                f"does not match its metadata (sha256 {digest[:12]} vs "
                                f"{entry['sha256'][:12]}): it was altered after registration; restore it, or "
                                "delete it and its metadata entry to have it computed again")
        return body

    def add_reference(self, name: str, version: int, path: Path, entry: dict) -> dict:
        """Upload a reference into a registered version, check the stored bytes, then list it in
        metadata.json under monitoring.reference by a conditional write."""
        model_version = ModelVersion(name, version, self.bucket)
        key = model_version.key(entry["file"])
        storage.upload_file(path, self.bucket, key)
        if storage.object_sha256(self.bucket, key) != (entry["sha256"], entry["size"]):
            raise RegistryError(f"s3://{self.bucket}/{key} failed verification after upload; "
                                f"{name}:{version} does not list it. Run the command again")
        found = storage.get_json(self.bucket, model_version.metadata_key)
        if found is None:
            raise RegistryError(f"{name}:{version} was deleted while its reference was computed")
        document, etag = found
        if (document.get("monitoring") or {}).get("reference"):
            return document["monitoring"]["reference"]  # another process listed one first: keep theirs
        listed = {**entry, "added_at": now()}
        updated = {**document, "monitoring": {**(document.get("monitoring") or {}), "reference": listed}}
        try:
            storage.put_json(self.bucket, model_version.metadata_key, updated, if_match=etag)
        except PreconditionFailed:
            raise RegistryError(f"metadata.json of {name}:{version} changed while its reference was being "
                                "listed (an export, a delete, or another monitor): run the command "
                                "again") from None
        log.info("added the monitoring reference to %s:%d (%s, sha256 verified)", name, version,
                 entry["file"])
        return listed
