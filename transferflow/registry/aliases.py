"""Aliases and their history: moves by conditional write, promote, rollback.

Aliases move with IfMatch=<etag>, so racing writers never overwrite each other blindly.

Alias history lives inside the alias document. A move and its history entry are then one
conditional write: there is no moment where the alias moved but its history does not say so
(or the reverse, an entry for a move that lost its race), a writer that loses the race
appends nothing, and a rollback reads the pointer and the history it undoes from the same
version of the same object. The cost is a document that grows by ~300 bytes a move (a few
hundred KB after a thousand registrations), read on each resolve; if that ever matters,
older entries can be archived to their own object with IfNoneMatch before being trimmed.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Final

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry.documents import (
    AliasAction,
    AliasDocument,
    HistoryEntry,
    VersionMetadata,
    actor,
    history_entries,
    now_precise,
)
from transferflow.registry.layout import alias_key, check_alias
from transferflow.registry.versions import MAX_RACE_ATTEMPTS
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)

ANY: Final = "any"  # promote(expected_current=ANY): move the alias from wherever it is when read

Current = tuple[AliasDocument, str] | None  # an alias document as read, with its ETag


def version_stack(entries: list[HistoryEntry]) -> list[int]:
    """The versions an alias went through, as an undo stack: a move pushes, a rollback pops.

    The top is where the alias points; the one below is where a rollback takes it.
    """
    stack: list[int] = []
    for entry in entries:
        if entry.action == AliasAction.ROLLBACK and stack[-2:-1] == [entry.to_version]:
            stack.pop()
            continue
        if not stack and entry.from_version is not None:
            stack.append(entry.from_version)
        if not stack or stack[-1] != entry.to_version:
            stack.append(entry.to_version)
    return stack


class AliasMoves:
    bucket: str

    def move_alias(self, name: str, alias: str, version: int, *, reason: str,
                   only_forward: bool = False, run_id: str | None = None, action: str = "move") -> bool:
        """Point an alias at a version with a conditional write; retries on a lost race.

        For automated moves (register). With only_forward, an alias already at a higher
        version stays (for `latest`). Returns whether the alias moved.
        """
        check_alias(alias)
        self._require_version(name, version)
        for attempt in range(MAX_RACE_ATTEMPTS):
            current = self._read_alias(name, alias)
            previous = current[0].version if current else None
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
        check_alias(alias)
        if expected_current != ANY and not (expected_current is None or isinstance(expected_current, int)):
            raise RegistryError(f"expected_current must be a version number, None or {ANY!r}, "
                                f"not {expected_current!r}")
        self._require_version(name, version)
        current = self._read_alias(name, alias)
        at = current[0].version if current else None
        if expected_current != ANY and at != expected_current:
            raise self._moved(name, alias, current, expected_current)
        if at == version:
            return None
        try:
            entry = self._write_alias(name, alias, current, version, action=AliasAction.PROMOTE,
                                      reason=reason, run_id=run_id)
        except PreconditionFailed:
            raise self._moved(name, alias, self._read_alias(name, alias), at) from None
        if self.record(name, version) is None:  # deleted between our check and our write
            raise RegistryError(f"{name}:{version} was deleted while {name}@{alias} was being moved to it; "
                                f"run `transferflow models rollback {name} --alias {alias}`")
        return entry.document()

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
        stack = version_stack(current[0].entries())
        if len(stack) < 2:
            raise RegistryError(f"{name}@{alias} has no earlier version to roll back to (it has only "
                                f"pointed at version {stack[-1]}); promote a version explicitly")
        target = stack[-2]
        if self.record(name, target) is None:
            raise RegistryError(f"cannot roll {name}@{alias} back to version {target}: that version "
                                "was deleted; promote an existing version with `transferflow models promote`")
        try:
            return self._write_alias(name, alias, current, target, action=AliasAction.ROLLBACK,
                                     reason=reason or f"rollback from version {stack[-1]}",
                                     run_id=run_id).document()
        except PreconditionFailed:
            raise self._moved(name, alias, self._read_alias(name, alias), stack[-1]) from None

    def _read_alias(self, name: str, alias: str) -> Current:
        found = storage.get_json(self.bucket, alias_key(name, alias))
        return (AliasDocument.model_validate(found[0]), found[1]) if found else None

    def _write_alias(self, name: str, alias: str, current: Current, version: int, *,
                     action: str, reason: str, run_id: str | None) -> HistoryEntry:
        """One conditional write that moves the alias and appends its history entry.

        Raises PreconditionFailed when another writer changed the alias since `current` was read.
        """
        document = current[0] if current else None
        previous = document.version if document else None
        entry = HistoryEntry(alias=alias, from_version=previous, to_version=version, action=str(action),
                             by=actor(), at=now_precise(), reason=reason, run_id=run_id)
        moved = AliasDocument(alias=alias, version=version, previous_version=previous, moved_at=entry.at,
                              moved_by=entry.by, reason=reason, run_id=run_id,
                              history=[*history_entries(document), entry])
        key = alias_key(name, alias)
        if current is None:
            storage.put_json(self.bucket, key, moved.document(), if_none_match=True)
        else:
            storage.put_json(self.bucket, key, moved.document(), if_match=current[1])
        log.info("moved %s@%s from %s to version %d (%s by %s)", name, alias,
                 "unset" if previous is None else f"version {previous}", version, action, entry.by)
        return entry

    def _moved(self, name: str, alias: str, current: Current, expected: int | None) -> RegistryError:
        """The error for an alias that is no longer where the caller expected it."""
        wanted = "expected it unset" if expected is None else f"expected it at version {expected}"
        if current is None:
            state = "does not exist"
        else:
            last = current[0].entries()[-1]
            moved = "set" if last.from_version is None else f"moved from version {last.from_version}"
            state = f"was {moved} to version {last.to_version} by {last.by or 'unknown'} at {last.at}"
        return RegistryError(
            f"{name}@{alias} moved concurrently: {wanted}, but it {state}. Nothing was changed; "
            f"check `transferflow models history {name} --alias {alias}` and retry")

    def _require_version(self, name: str, version: int) -> VersionMetadata:
        meta = self.record(name, version)
        if meta is None:
            raise RegistryError(f"{name}:{version} is not a registered version; cannot alias it")
        return meta
