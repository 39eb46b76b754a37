"""The model registry in object storage.

Layout under the bucket:
    models/<name>/versions/<000001>/claim.json     who reserved the version number
    models/<name>/versions/<000001>/model.keras    the artifact
    models/<name>/versions/<000001>/metadata.json  written last: a version exists once it does
    models/<name>/aliases/<alias>.json             {"version": N, ...}, moved by conditional write

Version numbers are reserved with IfNoneMatch="*" so two runs never share one.
Aliases move with IfMatch=<etag>, so racing writers never overwrite each other blindly.
This module imports neither TensorFlow nor Prefect.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

from transferflow import storage
from transferflow.config import MODEL_NAME_RE
from transferflow.errors import RegistryError
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)

MODELS = "models"
ARTIFACT = "model.keras"
MAX_RACE_ATTEMPTS = 50
REF_RE = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<alias>[a-z0-9._-]+))?$")
LIBRARIES = ("transferflow", "tensorflow", "keras", "numpy", "prefect", "boto3", "pydantic")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    bucket: str

    @property
    def prefix(self) -> str:
        return f"{MODELS}/{self.name}/versions/{self.version:06d}"

    @property
    def artifact_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{ARTIFACT}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


class Registry:
    def __init__(self, bucket: str | None = None):
        self.bucket = bucket or storage.bucket_name()

    # ---------------------------------------------------------------- writes

    def register(self, name: str, source_uri: str, sha256: str, size: int, metadata: dict,
                 run_id: str, aliases: tuple[str, ...] = ("latest",)) -> ModelVersion:
        """Copy a staged artifact into a new version, verify it, publish metadata, move aliases.

        Safe to retry with the same run_id: a version this run reserved but did not
        finish is reused, and a finished one is returned as is.
        """
        _check_name(name)
        version = self._reserve(name, run_id, sha256)
        done = storage.get_json(self.bucket, f"{version.prefix}/metadata.json")
        if done is None:
            self._publish(version, source_uri, sha256, size, metadata, run_id)
        for alias in aliases:
            self.move_alias(name, alias, version.version, reason=f"registered by run {run_id}",
                            only_forward=(alias == "latest"), run_id=run_id)
        return version

    def _reserve(self, name: str, run_id: str, sha256: str) -> ModelVersion:
        """Reuse this run's claim for these same bytes (a retry), else claim the next number.

        A re-run that trained different bytes gets a new version instead of being
        silently folded into the earlier one.
        """
        claims = self._claims(name)
        for number, claim in claims.items():
            if claim.get("run_id") == run_id and claim.get("sha256") == sha256:
                return ModelVersion(name, number, self.bucket)
        number = max(claims, default=0) + 1
        for _ in range(MAX_RACE_ATTEMPTS):
            version = ModelVersion(name, number, self.bucket)
            try:
                storage.put_json(self.bucket, f"{version.prefix}/claim.json",
                                 {"run_id": run_id, "sha256": sha256, "claimed_at": now()},
                                 if_none_match=True)
                return version
            except PreconditionFailed:
                number += 1
        raise RegistryError(f"could not reserve a version of {name} after {MAX_RACE_ATTEMPTS} tries")

    def _claims(self, name: str) -> dict[int, dict]:
        claims = {}
        for child in storage.list_children(self.bucket, f"{MODELS}/{name}/versions/"):
            if child.isdigit():
                found = storage.get_json(self.bucket, f"{MODELS}/{name}/versions/{child}/claim.json")
                claims[int(child)] = found[0] if found else {}
        return claims

    def _publish(self, version: ModelVersion, source_uri: str, sha256: str, size: int,
                 metadata: dict, run_id: str) -> None:
        key = f"{version.prefix}/{ARTIFACT}"
        storage.copy_object(storage.parse_s3_uri(source_uri), self.bucket, key)
        stored_sha, stored_size = storage.object_sha256(self.bucket, key)
        if (stored_sha, stored_size) != (sha256, size):
            raise RegistryError(
                f"{version.artifact_uri} failed verification (size {stored_size} vs {size}, "
                f"sha256 {stored_sha[:12]} vs {sha256[:12]}); version {version.version} stays "
                "invisible. Retry the registration.")
        document = {
            **metadata,
            "name": version.name, "version": version.version, "registered_at": now(),
            "artifact": {"uri": version.artifact_uri, "format": "keras", "size": size,
                         "sha256": sha256},
            "library_versions": library_versions(),
            "run_id": run_id,
        }
        try:
            storage.put_json(self.bucket, f"{version.prefix}/metadata.json", document,
                             if_none_match=True)
        except PreconditionFailed:  # an earlier attempt of this same run finished first
            pass
        log.info("registered %s version %d (%s)", version.name, version.version, version.artifact_uri)

    def move_alias(self, name: str, alias: str, version: int, *, reason: str,
                   only_forward: bool = False, run_id: str | None = None) -> bool:
        """Point an alias at a version with a conditional write; retries on a lost race.

        With only_forward, an alias already at a higher version stays (for `latest`).
        Returns whether the alias moved.
        """
        if self.metadata(name, version) is None:
            raise RegistryError(f"{name}:{version} is not a registered version; cannot alias it")
        key = f"{MODELS}/{name}/aliases/{alias}.json"
        for attempt in range(MAX_RACE_ATTEMPTS):
            current = storage.get_json(self.bucket, key)
            previous = current[0]["version"] if current else None
            if only_forward and previous is not None and previous >= version:
                return False
            document = {"alias": alias, "version": version, "previous_version": previous,
                        "moved_at": now(), "reason": reason, "run_id": run_id}
            try:
                if current is None:
                    storage.put_json(self.bucket, key, document, if_none_match=True)
                else:
                    storage.put_json(self.bucket, key, document, if_match=current[1])
                return True
            except PreconditionFailed:
                time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))
        raise RegistryError(f"alias {name}@{alias} kept changing under {MAX_RACE_ATTEMPTS} attempts")

    # ---------------------------------------------------------------- reads

    def names(self) -> list[str]:
        return storage.list_children(self.bucket, f"{MODELS}/")

    def versions(self, name: str) -> list[int]:
        """Published versions only: a version is visible once its metadata exists."""
        prefix = f"{MODELS}/{name}/versions/"
        numbers = (entry["Key"][len(prefix):].split("/")[0]
                   for entry in storage.list_keys(self.bucket, prefix)
                   if entry["Key"].endswith("/metadata.json"))
        return sorted(int(n) for n in numbers if n.isdigit())

    def metadata(self, name: str, version: int) -> dict | None:
        prefix = ModelVersion(name, version, self.bucket).prefix
        found = storage.get_json(self.bucket, f"{prefix}/metadata.json")
        return found[0] if found else None

    def aliases(self, name: str) -> dict[str, int]:
        prefix = f"{MODELS}/{name}/aliases/"
        result = {}
        for entry in storage.list_keys(self.bucket, prefix):
            alias = entry["Key"][len(prefix):].removesuffix(".json")
            found = storage.get_json(self.bucket, entry["Key"])
            if found:
                result[alias] = found[0]["version"]
        return result

    def alias(self, name: str, alias: str) -> dict | None:
        found = storage.get_json(self.bucket, f"{MODELS}/{name}/aliases/{alias}.json")
        return found[0] if found else None

    def resolve(self, reference: str) -> tuple[str, int]:
        """'name', 'name:3' or 'name@production' -> (name, version)."""
        match = REF_RE.match(reference)
        if not match:
            raise RegistryError(f"{reference!r} is not NAME, NAME:VERSION or NAME@ALIAS")
        name = match["name"]
        if match["version"]:
            version = int(match["version"])
            if self.metadata(name, version) is None:
                raise RegistryError(f"{name}:{version} does not exist; see `transferflow models list`")
            return name, version
        alias = match["alias"] or "latest"
        found = self.alias(name, alias)
        if found is None:
            raise RegistryError(f"{name}@{alias} does not exist; see `transferflow models list`")
        return name, found["version"]


def _check_name(name: str) -> None:
    if not MODEL_NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} is not key-safe (lowercase letters, digits, . _ -)")

