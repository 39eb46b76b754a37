"""Registering a version: reserve its number, copy and verify its files, publish its metadata.

Version numbers are reserved with IfNoneMatch="*" so two runs never share one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import metadata as importlib_metadata

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry.documents import (
    SCHEMA_VERSION,
    Artifact,
    Claim,
    TrainingRecord,
    VersionMetadata,
    now,
)
from transferflow.registry.layout import ModelVersion, check_name, versions_prefix
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)

MAX_RACE_ATTEMPTS = 50
LIBRARIES = ("transferflow", "tensorflow", "keras", "numpy", "prefect", "boto3", "pydantic")


# The same library under another distribution name: the CPU images install tensorflow-cpu.
ALSO_KNOWN_AS = {"tensorflow": ("tensorflow-cpu",)}


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        for distribution in (name, *ALSO_KNOWN_AS.get(name, ())):
            try:
                found[name] = importlib_metadata.version(distribution)
                break
            except importlib_metadata.PackageNotFoundError:
                continue
    return found


class VersionWrites:
    bucket: str

    def register(self, name: str, source_uri: str, sha256: str, size: int,
                 metadata: TrainingRecord | Mapping, run_id: str, aliases: tuple[str, ...] = ("latest",),
                 extra_files: dict[str, tuple[str, str, int]] | None = None,
                 extra_documents: Callable[[int], dict[str, str]] | None = None) -> ModelVersion:
        """Copy a staged artifact into a new version, verify it, publish metadata, move aliases.

        `extra_files` maps a path inside the version to a staged (uri, sha256, size), copied and
        verified like the artifact (e.g. the SavedModel); `extra_documents(version)` returns
        {path: text} to write (e.g. MODEL_CARD.md). All of it lands before metadata.json, so a
        reader never sees a version without them. Safe to retry with the same run_id: a
        version this run reserved but did not finish is reused, a finished one returned as is.
        """
        check_name(name)
        version = self._reserve(name, run_id, sha256)
        done = storage.get_json(self.bucket, version.metadata_key)
        if done is None:
            for relative, (uri, file_sha, file_size) in (extra_files or {}).items():
                self._copy_verified(version, uri, version.key(relative), file_sha, file_size)
            for relative, text in (extra_documents(version.version) if extra_documents else {}).items():
                storage.put_bytes(self.bucket, version.key(relative), text.encode(),
                                  "text/markdown" if relative.endswith(".md") else "text/plain")
            self._publish(version, source_uri, sha256, size, metadata, run_id)
        for alias in aliases:
            self.move_alias(name, alias, version.version, reason=f"registered by run {run_id}",
                            only_forward=(alias == "latest"), run_id=run_id, action="register")
        return version

    def _reserve(self, name: str, run_id: str, sha256: str) -> ModelVersion:
        """Reuse this run's claim for these same bytes (a retry), else claim the next number.

        A re-run that trained different bytes gets a new version instead of being
        silently folded into the earlier one. A deleted version's claim is never reused.
        """
        claims = self._claims(name)
        for number, claim in claims.items():
            if claim.run_id == run_id and claim.sha256 == sha256 and not claim.deleted:
                return ModelVersion(name, number, self.bucket)
        number = max(claims, default=0) + 1
        for _ in range(MAX_RACE_ATTEMPTS):
            version = ModelVersion(name, number, self.bucket)
            try:
                claim = Claim(run_id=run_id, sha256=sha256, claimed_at=now())
                storage.put_json(self.bucket, version.claim_key, claim.document(), if_none_match=True)
                return version
            except PreconditionFailed:
                number += 1
        raise RegistryError(f"could not reserve a version of {name} after {MAX_RACE_ATTEMPTS} tries")

    def _claims(self, name: str) -> dict[int, Claim]:
        claims = {}
        for child in storage.list_children(self.bucket, versions_prefix(name)):
            if child.isdigit():
                found = storage.get_json(self.bucket, ModelVersion(name, int(child), self.bucket).claim_key)
                claims[int(child)] = Claim.model_validate(found[0] if found else {})
        return claims

    def _publish(self, version: ModelVersion, source_uri: str, sha256: str, size: int,
                 metadata: TrainingRecord | Mapping, run_id: str) -> None:
        self._copy_verified(version, source_uri, version.artifact_key, sha256, size)
        given = metadata.document() if isinstance(metadata, TrainingRecord) else dict(metadata)
        document = VersionMetadata.model_validate({
            "schema_version": SCHEMA_VERSION, **given,
            "name": version.name, "version": version.version, "registered_at": now(),
            "artifact": Artifact(uri=version.artifact_uri, format="keras", size=size, sha256=sha256),
            "library_versions": library_versions(),
            "run_id": run_id,
        })
        try:
            storage.put_json(self.bucket, version.metadata_key, document.document(), if_none_match=True)
        except PreconditionFailed:  # an earlier attempt of this same run finished first
            pass
        log.info("registered %s version %d (%s)", version.name, version.version, version.artifact_uri)

    def _copy_verified(self, version: ModelVersion, source_uri: str, key: str, sha256: str,
                       size: int) -> None:
        storage.copy_object(storage.parse_s3_uri(source_uri), self.bucket, key)
        stored_sha, stored_size = storage.object_sha256(self.bucket, key)
        if (stored_sha, stored_size) != (sha256, size):
            raise RegistryError(
                f"s3://{self.bucket}/{key} failed verification (size {stored_size} vs {size}, "
                f"sha256 {stored_sha[:12]} vs {sha256[:12]}); version {version.version} stays "
                "invisible. Retry the registration.")
