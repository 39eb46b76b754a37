"""The model registry in object storage.

Layout under the bucket:
    models/<name>/versions/<000001>/claim.json     who reserved the version number; kept as a
                                                   tombstone when the version is deleted, so a
                                                   number is never handed out twice
    models/<name>/versions/<000001>/model.keras    the artifact
    models/<name>/versions/<000001>/metadata.json  written last, deleted first: a version exists
                                                   exactly while it does
    models/<name>/aliases/<alias>.json             {"version": N, ..., "history": [every move]},
                                                   moved by conditional write

Version numbers are reserved with IfNoneMatch="*" so two runs never share one.
Aliases move with IfMatch=<etag>, so racing writers never overwrite each other blindly.

Alias history lives inside the alias document. A move and its history entry are then one
conditional write: there is no moment where the alias moved but its history does not say so
(or the reverse, an entry for a move that lost its race), a writer that loses the race
appends nothing, and a rollback reads the pointer and the history it undoes from the same
version of the same object. The cost is a document that grows by ~300 bytes a move (a few
hundred KB after a thousand registrations), read on each resolve; if that ever matters,
older entries can be archived to their own object with IfNoneMatch before being trimmed.

This module imports neither TensorFlow nor Prefect.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path

from transferflow import storage
from transferflow.config import MODEL_NAME_RE
from transferflow.errors import RegistryError
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)

MODELS = "models"
ARTIFACT = "model.keras"
MAX_RACE_ATTEMPTS = 50
REF_RE = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<alias>[a-z0-9._-]+))?$")
ALIAS_RE = re.compile(r"^[a-z0-9._-]{1,63}$")
ARTIFACT_KEY_RE = re.compile(rf"^{MODELS}/(?P<name>[^/]+)/versions/(?P<version>\d+)/{re.escape(ARTIFACT)}$")
ANY = "any"  # promote(expected_current=ANY): move the alias from wherever it is when read
HEADLINE_METRICS = ("test.accuracy", "head.val_accuracy", "fine_tune.val_accuracy")
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


def now_precise() -> str:
    """UTC time to the millisecond, so that history entries from one second sort in order."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def actor() -> str:
    """Who moves an alias: $TRANSFERFLOW_USER, else login@hostname."""
    if os.environ.get("TRANSFERFLOW_USER"):
        return os.environ["TRANSFERFLOW_USER"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
                 run_id: str, aliases: tuple[str, ...] = ("latest",),
                 extra_files: dict[str, tuple[str, str, int]] | None = None,
                 extra_documents=None) -> ModelVersion:
        """Copy a staged artifact into a new version, verify it, publish metadata, move aliases.

        `extra_files` maps a path inside the version to a staged (uri, sha256, size), copied and
        verified like the artifact (e.g. the SavedModel); `extra_documents(version)` returns
        {path: text} to write (e.g. MODEL_CARD.md). All of it lands before metadata.json, so a
        reader never sees a version without them. Safe to retry with the same run_id: a
        version this run reserved but did not finish is reused, a finished one returned as is.
        """
        _check_name(name)
        version = self._reserve(name, run_id, sha256)
        done = storage.get_json(self.bucket, f"{version.prefix}/metadata.json")
        if done is None:
            for relative, (uri, file_sha, file_size) in (extra_files or {}).items():
                self._copy_verified(version, uri, f"{version.prefix}/{relative}", file_sha, file_size)
            for relative, text in (extra_documents(version.version) if extra_documents else {}).items():
                storage.put_bytes(self.bucket, f"{version.prefix}/{relative}", text.encode(),
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
            if claim.get("run_id") == run_id and claim.get("sha256") == sha256 and "deleted_at" not in claim:
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
        self._copy_verified(version, source_uri, f"{version.prefix}/{ARTIFACT}", sha256, size)
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

    def _copy_verified(self, version: ModelVersion, source_uri: str, key: str, sha256: str,
                       size: int) -> None:
        storage.copy_object(storage.parse_s3_uri(source_uri), self.bucket, key)
        stored_sha, stored_size = storage.object_sha256(self.bucket, key)
        if (stored_sha, stored_size) != (sha256, size):
            raise RegistryError(
                f"s3://{self.bucket}/{key} failed verification (size {stored_size} vs {size}, "
                f"sha256 {stored_sha[:12]} vs {sha256[:12]}); version {version.version} stays "
                "invisible. Retry the registration.")

    # ---------------------------------------------------------------- aliases

    def move_alias(self, name: str, alias: str, version: int, *, reason: str,
                   only_forward: bool = False, run_id: str | None = None, action: str = "move") -> bool:
        """Point an alias at a version with a conditional write; retries on a lost race.

        For automated moves (register). With only_forward, an alias already at a higher
        version stays (for `latest`). Returns whether the alias moved.
        """
        _check_alias(alias)
        self._require_version(name, version)
        for attempt in range(MAX_RACE_ATTEMPTS):
            current = self._read_alias(name, alias)
            previous = current[0]["version"] if current else None
            if previous == version or (only_forward and previous is not None and previous > version):
                return False
            try:
                self._write_alias(name, alias, current, version, action=action, reason=reason,
                                  run_id=run_id)
                return True
            except PreconditionFailed:
                time.sleep(random.uniform(0.01, 0.05 * (attempt + 1)))
        raise RegistryError(f"alias {name}@{alias} kept changing under {MAX_RACE_ATTEMPTS} attempts")

    def promote(self, name: str, version: int, alias: str, reason: str,
                expected_current: int | None | str = ANY, run_id: str | None = None) -> dict | None:
        """Point any alias (even `latest`) at an existing version: a deliberate, single attempt.

        expected_current is the version the caller believes the alias is at (None: not set
        yet; ANY: whatever it is when read). If another writer moved it meanwhile, nothing
        is written and RegistryError says who moved it. Returns the history entry, or None
        when the alias already pointed there.
        """
        _check_alias(alias)
        if expected_current != ANY and not (expected_current is None or isinstance(expected_current, int)):
            raise RegistryError(f"expected_current must be a version number, None or {ANY!r}, "
                                f"not {expected_current!r}")
        self._require_version(name, version)
        current = self._read_alias(name, alias)
        at = current[0]["version"] if current else None
        if expected_current != ANY and at != expected_current:
            raise self._moved(name, alias, current, expected_current)
        if at == version:
            return None
        try:
            entry = self._write_alias(name, alias, current, version, action="promote", reason=reason,
                                      run_id=run_id)
        except PreconditionFailed:
            raise self._moved(name, alias, self._read_alias(name, alias), at) from None
        if self.metadata(name, version) is None:  # deleted between our check and our write
            raise RegistryError(f"{name}:{version} was deleted while {name}@{alias} was being moved to it; "
                                f"run `transferflow models rollback {name} --alias {alias}`")
        return entry

    def rollback(self, name: str, alias: str, reason: str | None = None,
                 run_id: str | None = None) -> dict:
        """Undo the alias's last move that is not itself undone; returns the history entry.

        The history is an undo stack: register and promote push a version, rollback pops
        one. So rolling back twice goes two moves back, and a rollback after a new promote
        undoes that promote. Conditional on the alias still being where its history says.
        """
        current = self._read_alias(name, alias)
        if current is None:
            raise RegistryError(f"{name}@{alias} does not exist; nothing to roll back")
        stack = version_stack(history_entries(current[0]))
        if len(stack) < 2:
            raise RegistryError(f"{name}@{alias} has no earlier version to roll back to (it has only "
                                f"pointed at version {stack[-1]}); promote a version explicitly")
        target = stack[-2]
        if self.metadata(name, target) is None:
            raise RegistryError(f"cannot roll {name}@{alias} back to version {target}: that version "
                                "was deleted; promote an existing version with `transferflow models promote`")
        try:
            return self._write_alias(name, alias, current, target, action="rollback",
                                     reason=reason or f"rollback from version {stack[-1]}", run_id=run_id)
        except PreconditionFailed:
            raise self._moved(name, alias, self._read_alias(name, alias), stack[-1]) from None

    def _read_alias(self, name: str, alias: str) -> tuple[dict, str] | None:
        return storage.get_json(self.bucket, f"{MODELS}/{name}/aliases/{alias}.json")

    def _write_alias(self, name: str, alias: str, current: tuple[dict, str] | None, version: int, *,
                     action: str, reason: str, run_id: str | None) -> dict:
        """One conditional write that moves the alias and appends its history entry.

        Raises PreconditionFailed when another writer changed the alias since `current` was read.
        """
        document = current[0] if current else None
        previous = document["version"] if document else None
        entry = {"alias": alias, "from_version": previous, "to_version": version, "action": action,
                 "by": actor(), "at": now_precise(), "reason": reason, "run_id": run_id}
        moved = {"alias": alias, "version": version, "previous_version": previous, "moved_at": entry["at"],
                 "moved_by": entry["by"], "reason": reason, "run_id": run_id,
                 "history": [*history_entries(document), entry]}
        key = f"{MODELS}/{name}/aliases/{alias}.json"
        if current is None:
            storage.put_json(self.bucket, key, moved, if_none_match=True)
        else:
            storage.put_json(self.bucket, key, moved, if_match=current[1])
        log.info("moved %s@%s from %s to version %d (%s by %s)", name, alias,
                 "unset" if previous is None else f"version {previous}", version, action, entry["by"])
        return entry

    def _moved(self, name: str, alias: str, current: tuple[dict, str] | None,
               expected: int | None) -> RegistryError:
        """The error for an alias that is no longer where the caller expected it."""
        wanted = "expected it unset" if expected is None else f"expected it at version {expected}"
        if current is None:
            state = "does not exist"
        else:
            last = history_entries(current[0])[-1]
            moved = "set" if last["from_version"] is None else f"moved from version {last['from_version']}"
            state = (f"was {moved} to version {last['to_version']} by {last.get('by') or 'unknown'} "
                     f"at {last.get('at')}")
        return RegistryError(
            f"{name}@{alias} moved concurrently: {wanted}, but it {state}. Nothing was changed; "
            f"check `transferflow models history {name} --alias {alias}` and retry")

    def _require_version(self, name: str, version: int) -> dict:
        meta = self.metadata(name, version)
        if meta is None:
            raise RegistryError(f"{name}:{version} is not a registered version; cannot alias it")
        return meta

    # ---------------------------------------------------------------- removal

    def delete(self, name: str, version: int, dry_run: bool = False) -> list[str]:
        """Remove a version no alias points at; returns the keys removed (or that would be).

        metadata.json goes first, so readers see the version vanish at once. The claim then
        becomes a tombstone, so the number is never given to another model and gc can finish
        a delete that was interrupted before the remaining objects went.
        """
        model_version = ModelVersion(name, version, self.bucket)
        metadata_key = f"{model_version.prefix}/metadata.json"
        claim_key = f"{model_version.prefix}/claim.json"
        meta = storage.get_json(self.bucket, metadata_key)
        if meta is None:
            raise RegistryError(f"{name}:{version} does not exist; see `transferflow models list`")
        self._refuse_if_aliased(name, version)
        others = [entry["Key"] for entry in storage.list_keys(self.bucket, f"{model_version.prefix}/")
                  if entry["Key"] not in (metadata_key, claim_key)]
        if dry_run:
            return [metadata_key, *others]
        _delete_key(self.bucket, metadata_key)
        # A promote that read the metadata just before it went: it checks again after its
        # own write, and we check after ours, so at least one of the two notices the other.
        if self._aliases_on(name, version):
            storage.put_json(self.bucket, metadata_key, meta[0], if_none_match=True)
            self._refuse_if_aliased(name, version)
        claim = storage.get_json(self.bucket, claim_key)
        storage.put_json(self.bucket, claim_key, {**(claim[0] if claim else {}), "deleted_at": now(),
                                                  "deleted_by": actor()})
        for key in others:
            _delete_key(self.bucket, key)
        log.info("deleted %s version %d (%d objects)", name, version, len(others) + 1)
        return [metadata_key, *others]

    def gc(self, name: str, keep: int, dry_run: bool = False) -> list[int]:
        """Delete the oldest versions beyond the newest `keep`; returns the versions removed.

        Never removes a version an alias points at, nor the one each alias would roll back to.
        Also finishes deletes that were interrupted.
        """
        if keep < 0:
            raise RegistryError(f"gc --keep must be 0 or more, not {keep}")
        if not dry_run:
            self._finish_deletes(name)
        versions = self.versions(name)
        protected = self._protected(name)
        doomed = [v for v in versions[:max(len(versions) - keep, 0)] if v not in protected]
        if not dry_run:
            for version in doomed:
                self.delete(name, version)
        return doomed

    def _finish_deletes(self, name: str) -> None:
        """Remove what an interrupted delete left: the objects of a version whose claim is a tombstone."""
        for number, claim in self._claims(name).items():
            if "deleted_at" in claim:
                prefix = ModelVersion(name, number, self.bucket).prefix
                for entry in storage.list_keys(self.bucket, f"{prefix}/"):
                    if not entry["Key"].endswith("/claim.json"):
                        _delete_key(self.bucket, entry["Key"])
                        log.info("removed %s, left by an interrupted delete", entry["Key"])

    def _aliases_on(self, name: str, version: int) -> list[str]:
        return sorted(alias for alias, at in self.aliases(name).items() if at == version)

    def _refuse_if_aliased(self, name: str, version: int) -> None:
        aliases = self._aliases_on(name, version)
        if aliases:
            raise RegistryError(
                f"{name}:{version} is in use by alias {', '.join(aliases)}; move "
                f"{'it' if len(aliases) == 1 else 'them'} first (`transferflow models promote` or "
                "`rollback`), then delete")

    def _protected(self, name: str) -> set[int]:
        """Versions aliases point at, and those a rollback of each alias would go back to."""
        protected = set()
        for alias in self._alias_names(name):
            found = self._read_alias(name, alias)
            if found:
                protected.update(version_stack(history_entries(found[0]))[-2:])
        return protected

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

    def _alias_names(self, name: str) -> list[str]:
        prefix = f"{MODELS}/{name}/aliases/"
        return [entry["Key"][len(prefix):].removesuffix(".json")
                for entry in storage.list_keys(self.bucket, prefix)]

    def aliases(self, name: str) -> dict[str, int]:
        result = {}
        for alias in self._alias_names(name):
            found = self.alias(name, alias)
            if found:
                result[alias] = found["version"]
        return result

    def alias(self, name: str, alias: str) -> dict | None:
        found = self._read_alias(name, alias)
        return found[0] if found else None

    def history(self, name: str, alias: str | None = None) -> list[dict]:
        """Every move of one alias (or of all of them), oldest first."""
        if alias is not None:
            return list(history_entries(self.alias(name, alias)))
        entries = [e for a in self._alias_names(name) for e in history_entries(self.alias(name, a))]
        return sorted(entries, key=lambda entry: entry.get("at") or "")

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
        if self.metadata(name, found["version"]) is None:
            raise RegistryError(f"{name}@{alias} points at version {found['version']}, which was deleted; "
                                f"run `transferflow models rollback {name} --alias {alias}`")
        return name, found["version"]

    def diff(self, ref_a: str, ref_b: str) -> dict:
        """Two versions side by side: the parameters that differ, and the headline metrics.

        Nested keys are dotted (`augment.flip`); each value is [a, b], None where absent.
        """
        labels, params, metrics = [], [], []
        for reference in (ref_a, ref_b):
            name, version = self.resolve(reference)
            meta = self.metadata(name, version) or {}
            labels.append(f"{name}:{version}")
            params.append(flatten(meta.get("parameters") or {}))
            metrics.append(headline_metrics(meta.get("metrics") or {}))
        (pa, pb), (ma, mb) = params, metrics
        return {
            "a": labels[0], "b": labels[1],
            "parameters": {k: [pa.get(k), pb.get(k)] for k in sorted(pa.keys() | pb.keys())
                           if pa.get(k) != pb.get(k)},
            "metrics": {k: [ma.get(k), mb.get(k)] for k in sorted(ma.keys() | mb.keys(), key=_metric_order)},
        }

    def pull(self, reference: str, dest_dir: Path | str) -> Path:
        """Download a version's artifact into dest_dir and check its size and sha256 first.

        A file that fails the check is deleted, never left where a loader could find it;
        an existing file that already matches is reused.
        """
        name, version = self.resolve(reference)
        artifact = self.metadata(name, version)["artifact"]
        target = Path(dest_dir) / f"{name}-v{version}.keras"
        if target.is_file() and _mismatch(target, artifact) is None:
            return target
        location = storage.parse_s3_object_uri(artifact["uri"])
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.unverified")
        try:
            storage.download_file(location.bucket, location.key, partial)
            problem = _mismatch(partial, artifact)
            if problem:
                raise RegistryError(f"integrity check failed for {name}:{version} ({artifact['uri']}): "
                                    f"{problem}: the stored artifact was altered after registration. "
                                    "The download was discarded; restore the object or register again")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
            partial.with_name(partial.name + ".part").unlink(missing_ok=True)
        log.debug("pulled %s:%d to %s (sha256 verified)", name, version, target)
        return target


def verified_download(reference_or_uri: str) -> Path:
    """A registered model as a local file (cached) whose size and sha256 match its metadata.

    Takes 'name', 'name:3', 'name@alias' (in $TRANSFERFLOW_BUCKET) or a registry artifact
    URI s3://bucket/models/<name>/versions/<N>/model.keras.
    """
    if reference_or_uri.startswith("s3://"):
        location = storage.parse_s3_object_uri(reference_or_uri)
        match = ARTIFACT_KEY_RE.match(location.key)
        if not match:
            raise RegistryError(f"{reference_or_uri} is not a registered model artifact "
                                f"({MODELS}/NAME/versions/N/{ARTIFACT}), so there is no recorded sha256 to "
                                "verify it against; pass NAME:VERSION or NAME@ALIAS")
        registry, reference = Registry(location.bucket), f"{match['name']}:{int(match['version'])}"
    else:
        registry, reference = Registry(), reference_or_uri
    return registry.pull(reference, storage.cache_dir() / "models" / registry.bucket)


def history_entries(document: dict | None) -> list[dict]:
    """An alias document's moves, oldest first; one written before history existed gives its last move."""
    if document is None:
        return []
    if "history" in document:
        return document["history"]
    return [{"alias": document["alias"], "from_version": document.get("previous_version"),
             "to_version": document["version"], "action": "move", "by": None,
             "at": document.get("moved_at"), "reason": document.get("reason"),
             "run_id": document.get("run_id")}]


def version_stack(entries: list[dict]) -> list[int]:
    """The versions an alias went through, as an undo stack: a move pushes, a rollback pops.

    The top is where the alias points; the one below is where a rollback takes it.
    """
    stack: list[int] = []
    for entry in entries:
        if entry.get("action") == "rollback" and stack[-2:-1] == [entry["to_version"]]:
            stack.pop()
            continue
        if not stack and entry.get("from_version") is not None:
            stack.append(entry["from_version"])
        if not stack or stack[-1] != entry["to_version"]:
            stack.append(entry["to_version"])
    return stack


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values stay as they are."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def headline_metrics(metrics: dict) -> dict:
    """Test accuracy, per-class test accuracy, and validation accuracy of each phase."""
    flat = flatten(metrics)
    chosen = {key: flat.get(key) for key in HEADLINE_METRICS}
    chosen.update({key: value for key, value in flat.items()
                   if key.startswith("test.per_class.") and key.endswith(".accuracy")})
    return chosen


def _metric_order(key: str) -> tuple[int, str]:
    return (HEADLINE_METRICS.index(key) if key in HEADLINE_METRICS else len(HEADLINE_METRICS), key)


def _mismatch(path: Path, artifact: dict) -> str | None:
    """Why a local file is not the recorded artifact, or None when size and sha256 match."""
    size = path.stat().st_size
    if size != artifact["size"]:
        return f"expected {artifact['size']} bytes, got {size}"
    sha = storage.sha256_file(path)
    if sha != artifact["sha256"]:
        return f"expected sha256 {artifact['sha256']}, got {sha}"
    return None


def _delete_key(bucket: str, key: str) -> None:
    with storage.translated("delete", bucket, key):
        storage.client().delete_object(Bucket=bucket, Key=key)


def _check_name(name: str) -> None:
    if not MODEL_NAME_RE.match(name):
        raise RegistryError(f"model name {name!r} is not key-safe (lowercase letters, digits, . _ -)")


def _check_alias(alias: str) -> None:
    if not ALIAS_RE.match(alias):
        raise RegistryError(f"alias {alias!r} is not valid: use 1-63 lowercase letters, digits, . _ -")
