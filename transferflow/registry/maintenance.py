"""Removing versions: delete one no alias uses, gc old ones, finish interrupted deletes."""

from __future__ import annotations

import logging

from transferflow import storage
from transferflow.errors import RegistryError
from transferflow.registry.aliases import version_stack
from transferflow.registry.documents import Claim, actor, now
from transferflow.registry.layout import CLAIM, ModelVersion

log = logging.getLogger(__name__)


class Maintenance:
    bucket: str

    def delete(self, name: str, version: int, dry_run: bool = False) -> list[str]:
        """Remove a version no alias points at; returns the keys removed (or that would be).

        metadata.json goes first, so readers see the version vanish at once. The claim then
        becomes a tombstone, so the number is never given to another model and gc can finish
        a delete that was interrupted before the remaining objects went.
        """
        model_version = ModelVersion(name, version, self.bucket)
        metadata_key, claim_key = model_version.metadata_key, model_version.claim_key
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
        if self.aliases_of(name, version):
            storage.put_json(self.bucket, metadata_key, meta[0], if_none_match=True)
            self._refuse_if_aliased(name, version)
        claim = storage.get_json(self.bucket, claim_key)
        tombstone = Claim.model_validate({**(claim[0] if claim else {}), "deleted_at": now(),
                                          "deleted_by": actor()})
        storage.put_json(self.bucket, claim_key, tombstone.document())
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
            if claim.deleted:
                prefix = ModelVersion(name, number, self.bucket).prefix
                for entry in storage.list_keys(self.bucket, f"{prefix}/"):
                    if not entry["Key"].endswith(f"/{CLAIM}"):
                        _delete_key(self.bucket, entry["Key"])
                        log.info("removed %s, left by an interrupted delete", entry["Key"])

    def _refuse_if_aliased(self, name: str, version: int) -> None:
        aliases = self.aliases_of(name, version)
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
                protected.update(version_stack(found[0].entries())[-2:])
        return protected


def _delete_key(bucket: str, key: str) -> None:
    with storage.translated("delete", bucket, key):
        storage.client().delete_object(Bucket=bucket, Key=key)
