"""Reading the registry: names, versions, metadata, aliases, history, references, verified pulls."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry.documents import AliasDocument, Artifact, HistoryEntry, VersionMetadata
from transferflow.registry.layout import (
    ARTIFACT,
    ARTIFACT_KEY_RE,
    EXPORT_SUFFIXES,
    KERAS,
    MODELS,
    ModelVersion,
    alias_key,
    alias_of_key,
    aliases_prefix,
    parse_reference,
    pulled_name,
    version_of_key,
    versions_prefix,
)

log = logging.getLogger(__name__)


class Reads:
    bucket: str

    def names(self) -> list[str]:
        return storage.list_children(self.bucket, f"{MODELS}/")

    def versions(self, name: str) -> list[int]:
        """Published versions only: a version is visible once its metadata exists."""
        numbers = (version_of_key(name, entry["Key"])
                   for entry in storage.list_keys(self.bucket, versions_prefix(name))
                   if entry["Key"].endswith("/metadata.json"))
        return sorted(int(n) for n in numbers if n.isdigit())

    def metadata(self, name: str, version: int) -> dict | None:
        """A version's metadata.json as stored (the JSON document); see `record` for the typed one."""
        found = storage.get_json(self.bucket, ModelVersion(name, version, self.bucket).metadata_key)
        return found[0] if found else None

    def record(self, name: str, version: int) -> VersionMetadata | None:
        """A version's metadata, typed; None when the version does not exist (or was deleted)."""
        found = self.metadata(name, version)
        return VersionMetadata.model_validate(found) if found is not None else None

    def _alias_names(self, name: str) -> list[str]:
        return [alias_of_key(name, entry["Key"])
                for entry in storage.list_keys(self.bucket, aliases_prefix(name))]

    def aliases(self, name: str) -> dict[str, int]:
        result = {}
        for alias in self._alias_names(name):
            found = self.alias_document(name, alias)
            if found:
                result[alias] = found.version
        return result

    def aliases_of(self, name: str, version: int) -> list[str]:
        """The aliases that point at this version, sorted."""
        return sorted(alias for alias, at in self.aliases(name).items() if at == version)

    def alias(self, name: str, alias: str) -> dict | None:
        """An alias document as stored; see `alias_document` for the typed one."""
        found = storage.get_json(self.bucket, alias_key(name, alias))
        return found[0] if found else None

    def alias_document(self, name: str, alias: str) -> AliasDocument | None:
        found = self.alias(name, alias)
        return AliasDocument.model_validate(found) if found is not None else None

    def history_entries(self, name: str, alias: str | None = None) -> list[HistoryEntry]:
        """Every move of one alias (or of all of them), oldest first."""
        if alias is not None:
            document = self.alias_document(name, alias)
            return list(document.entries()) if document else []
        entries = [e for a in self._alias_names(name) for e in self.history_entries(name, a)]
        return sorted(entries, key=lambda entry: entry.at or "")

    def history(self, name: str, alias: str | None = None) -> list[dict]:
        """history_entries as JSON documents."""
        return [entry.document() for entry in self.history_entries(name, alias)]

    def resolve(self, reference: str) -> tuple[str, int]:
        """'name', 'name:3' or 'name@production' -> (name, version)."""
        name, version, alias = parse_reference(reference)
        if version is not None:
            if self.metadata(name, version) is None:
                raise RegistryError(f"{name}:{version} does not exist; see `transferflow models list`")
            return name, version
        alias = alias or "latest"
        found = self.alias_document(name, alias)
        if found is None:
            raise RegistryError(f"{name}@{alias} does not exist; see `transferflow models list`")
        if self.metadata(name, found.version) is None:
            raise RegistryError(f"{name}@{alias} points at version {found.version}, which was deleted; "
                                f"run `transferflow models rollback {name} --alias {alias}`")
        return name, found.version

    def pull(self, reference: str, dest_dir: Path | str, export: str = KERAS) -> Path:
        """Download a version's artifact (or one of its exports: onnx, litert, litert_int8) into
        dest_dir and check its size and sha256 first.

        A file that fails the check is deleted, never left where a loader could find it;
        an existing file that already matches is reused.
        """
        name, version = self.resolve(reference)
        record = self.record(name, version)
        artifact = (record.artifact if export == KERAS
                    else self._export_artifact(name, version, record, export))
        target = Path(dest_dir) / pulled_name(name, version, export)
        if target.is_file() and mismatch(target, artifact) is None:
            return target
        location = storage.parse_s3_object_uri(artifact.uri)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.unverified")
        try:
            storage.download_file(location.bucket, location.key, partial)
            problem = mismatch(partial, artifact)
            if problem:
                what = "artifact" if export == KERAS else f"{export} export"
                raise RegistryError(f"integrity check failed for {name}:{version} ({artifact.uri}): "
                                    f"{problem}: the stored {what} was altered after registration. The "
                                    "download was discarded; restore the object or register again")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        log.debug("pulled %s:%d (%s) to %s (sha256 verified)", name, version, export, target)
        return target

    def membership(self, name: str, version: int):
        """The digests and splits of the images a version was trained, validated and tested on
        (its splits.json.gz, sha256 checked); None for versions registered before they were kept."""
        from transferflow.data.membership import MembershipRef, read_membership

        record = self.record(name, version)
        listed = record.dataset.membership if record is not None else None
        if not listed:
            return None
        uri = f"s3://{self.bucket}/{ModelVersion(name, version, self.bucket).key(listed['file'])}"
        return read_membership(MembershipRef(uri=uri, sha256=listed["sha256"], size=listed["size"],
                                             images=listed.get("images", 0)))

    def _export_artifact(self, name: str, version: int, record: VersionMetadata, export: str) -> Artifact:
        """A listed export as an Artifact (where it is, its recorded size and sha256)."""
        listed = record.exports.get(export)
        if export not in EXPORT_SUFFIXES or not isinstance(listed, dict) or "file" not in listed:
            have = sorted(key for key, value in record.exports.items()
                          if isinstance(value, dict) and "file" in value)
            raise RegistryError(f"{name}:{version} has no {export} export (it has: "
                                f"{', '.join([KERAS, *have])}): add one with `transferflow models export "
                                f"{name}:{version} --format onnx|litert [--int8]`")
        uri = f"s3://{self.bucket}/{ModelVersion(name, version, self.bucket).key(listed['file'])}"
        return Artifact(uri=uri, format=export, size=listed["size"], sha256=listed["sha256"])


def artifact_reference(uri: str) -> tuple[str, str]:
    """(bucket, 'name:version') of a registry artifact URI s3://bucket/models/<name>/versions/<N>/model.keras."""
    location = storage.parse_s3_object_uri(uri)
    match = ARTIFACT_KEY_RE.match(location.key)
    if not match:
        raise RegistryError(f"{uri} is not a registered model artifact "
                            f"({MODELS}/NAME/versions/N/{ARTIFACT}), so there is no recorded sha256 to "
                            "verify it against; pass NAME:VERSION or NAME@ALIAS")
    return location.bucket, f"{match['name']}:{int(match['version'])}"


def mismatch(path: Path, artifact: Artifact) -> str | None:
    """Why a local file is not the recorded artifact, or None when size and sha256 match."""
    size = path.stat().st_size
    if size != artifact.size:
        return f"expected {artifact.size} bytes, got {size}"
    sha = storage.sha256_file(path)
    if sha != artifact.sha256:
        return f"expected sha256 {artifact.sha256}, got {sha}"
    return None
