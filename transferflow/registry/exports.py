"""Adding a portable export (ONNX, LiteRT) to a version that is already registered.

metadata.json is the version's existence marker, and readers must never see it list a file that is
not there whole. So the export is uploaded under a key named by its content, read back and checked
(size, sha256), and only then listed, by rewriting metadata.json with IfMatch on the ETag it was read
with just before: a concurrent change (another export, a delete) makes the write fail, and the
command says so instead of overwriting the other writer's change.
"""

from __future__ import annotations

import logging
from pathlib import Path

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry.documents import actor, now
from transferflow.registry.layout import ModelVersion, export_file
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)


class ExportWrites:
    bucket: str

    def export_slot(self, name: str, version: int, export: str) -> tuple[dict, str]:
        """The version's metadata document and its ETag, if the version exists and has no `export`
        yet; a RegistryError naming the fix otherwise. Asked before converting, and again just
        before listing the new file."""
        found = storage.get_json(self.bucket, ModelVersion(name, version, self.bucket).metadata_key)
        if found is None:
            raise RegistryError(f"{name}:{version} does not exist (or was deleted while the export was "
                                "made); see `transferflow models list`")
        document, etag = found
        listed = (document.get("exports") or {}).get(export)
        if listed:
            raise RegistryError(f"{name}:{version} already has its {export} export ({listed.get('file')}, "
                                f"sha256 {str(listed.get('sha256'))[:12]}...): pull it with `transferflow "
                                f"models pull {name}:{version} DIR --format ...`; a listed file is "
                                "never replaced")
        return document, etag

    def add_export(self, name: str, version: int, export: str, path: Path | str, entry: dict) -> dict:
        """Upload a verified export file into a registered version, check the stored bytes, then
        list it in metadata.json under exports.<export> by a conditional write. Returns the entry
        as listed (with its `file` inside the version)."""
        model_version = ModelVersion(name, version, self.bucket)
        relative = export_file(export, entry["sha256"])
        key = model_version.key(relative)
        self.export_slot(name, version, export)  # before the upload: nothing to do if it is there
        storage.upload_file(Path(path), self.bucket, key)
        stored_sha, stored_size = storage.object_sha256(self.bucket, key)
        if (stored_sha, stored_size) != (entry["sha256"], entry["size"]):
            raise RegistryError(f"s3://{self.bucket}/{key} failed verification after upload (size "
                                f"{stored_size} vs {entry['size']}, sha256 {stored_sha[:12]} vs "
                                f"{entry['sha256'][:12]}); {name}:{version} does not list it. Run the "
                                "export again")
        document, etag = self.export_slot(name, version, export)
        listed = {**entry, "file": relative, "added_at": now(), "added_by": actor()}
        updated = {**document, "exports": {**(document.get("exports") or {}), export: listed}}
        try:
            storage.put_json(self.bucket, model_version.metadata_key, updated, if_match=etag)
        except PreconditionFailed:
            raise RegistryError(
                f"metadata.json of {name}:{version} changed while the {export} export was being listed "
                f"(another `models export`, or a delete): it was left as the other writer made it and "
                f"does not list this export. Check `transferflow models show {name}:{version}` and run "
                f"the export again if it is still missing; s3://{self.bucket}/{key} is unlisted and may "
                "be deleted") from None
        log.info("added the %s export to %s:%d (%s, %d bytes, sha256 verified)", export, name, version,
                 relative, entry["size"])
        return listed
