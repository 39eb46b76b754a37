"""A run when data lands: list a dataset prefix on a short interval, and once its listing has
changed and then stayed quiet for a debounce window, say so once (`transferflow watch`).

The listing fingerprint is the dataset stage's cheap source signature (keys, ETags, sizes), so the
fingerprint an event carries is the one the run it starts records in `change_check.source`.

State lives in object storage (watch/<slug>-<hash>.json), written with conditional writes, so a
watcher can be restarted, or moved to another machine, without emitting twice:
- what the prefix held when it was first watched is the baseline: no event for it;
- before emitting, the state records `emitting` (the fingerprint and the event's id, derived from
  prefix, fingerprint and generation); a watcher that died before recording `emitted` sends the
  same event again on restart, which Prefect's trigger service discards as already seen (and the
  run it would start finds nothing changed and ends Skipped);
- two watchers on one prefix: the one whose conditional write loses does not emit.
This module imports no Prefect: the emitter is passed in (transferflow_flows.entry.watch_here).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from transferflow import storage
from transferflow.config.naming import dataset_slug
from transferflow.errors import DatasetError, TransferflowError
from transferflow.storage import PreconditionFailed

log = logging.getLogger(__name__)

EVENT = "transferflow.dataset.changed"
DEFAULT_DEBOUNCE_S = 600.0
DEFAULT_INTERVAL_S = 30.0
STATE_PREFIX = "watch"


class WatchState(BaseModel):
    """What a watcher knows about one prefix, kept in object storage between polls and restarts."""

    prefix: str
    fingerprint: str  # the listing last seen
    changed_at: float  # when it was first seen (epoch seconds)
    emitted: str  # the fingerprint last announced (the baseline counts as announced)
    generation: int = 0  # events emitted so far
    emitting: str | None = None  # being announced: the event id, re-sent after a crash


class DatasetChange(BaseModel):
    """What the on-data trigger passes to the retrain flow: the prefix that changed (it replaces
    config.dataset) and its listing fingerprint when the event was sent."""

    dataset: str
    fingerprint: str | None = None


def apply_change(config, changed: DatasetChange | None):
    """The config to train with: the deployment's, on the dataset that changed."""
    if changed is None:
        return config
    return type(config).model_validate({**config.model_dump(), "dataset": changed.dataset})


@dataclass(frozen=True)
class Change:
    """One announcement: what changed, and the event id that makes a re-send a duplicate."""

    prefix: str
    fingerprint: str
    event_id: str
    objects: int


def listing_fingerprint(prefix: str) -> tuple[str, int]:
    """(the source signature of an s3:// prefix, its object count): one listing, no reads."""
    from transferflow.data import source_signature

    if not prefix.startswith("s3://"):
        raise DatasetError(f"watch {prefix!r}: only s3:// prefixes are watched; pass s3://bucket/prefix/")
    location = storage.parse_s3_uri(prefix)
    objects = sum(1 for _ in storage.list_keys(location.bucket, location.key))
    return source_signature(prefix), objects


def state_key(prefix: str) -> str:
    return f"{STATE_PREFIX}/{dataset_slug(prefix)}-{hashlib.sha256(prefix.encode()).hexdigest()[:12]}.json"


def event_id(prefix: str, fingerprint: str, generation: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{EVENT}:{prefix}:{fingerprint}:{generation}"))


@dataclass
class Watcher:
    """The debounce of one prefix, its state in `bucket`."""

    prefix: str
    debounce_s: float = DEFAULT_DEBOUNCE_S
    bucket: str | None = None

    def poll(self, now: float | None = None) -> Change | None:
        """List the prefix once; the change to announce now, if any (already recorded as being
        announced: call `announced` once it was sent)."""
        now = time.time() if now is None else now
        bucket, key = self.bucket or storage.bucket_name(), state_key(self.prefix)
        fingerprint, objects = listing_fingerprint(self.prefix)
        found = storage.get_json(bucket, key)
        if found is None:  # first watched: the baseline, announced by definition
            state = WatchState(prefix=self.prefix, fingerprint=fingerprint, changed_at=now,
                               emitted=fingerprint)
            self._write(bucket, key, state, None)
            log.info("watching %s: %d objects now (the baseline)", self.prefix, objects)
            return None
        state, etag = WatchState.model_validate(found[0]), found[1]
        if state.emitting is not None:  # a send was under way when a watcher stopped: send it again
            return Change(self.prefix, state.fingerprint, state.emitting, objects)
        if fingerprint != state.fingerprint:
            state = state.model_copy(update={"fingerprint": fingerprint, "changed_at": now})
            etag = self._write(bucket, key, state, etag)
            log.info("%s changed (%d objects): announcing it once quiet for %.0fs", self.prefix, objects,
                     self.debounce_s)
            return None
        if state.fingerprint == state.emitted or now - state.changed_at < self.debounce_s:
            return None
        ident = event_id(self.prefix, state.fingerprint, state.generation + 1)
        self._write(bucket, key, state.model_copy(update={"emitting": ident}), etag)
        return Change(self.prefix, state.fingerprint, ident, objects)

    def announced(self, change: Change) -> None:
        """Record that `change` was sent: it will not be sent again."""
        bucket, key = self.bucket or storage.bucket_name(), state_key(self.prefix)
        found = storage.get_json(bucket, key)
        state = WatchState.model_validate(found[0])
        if state.emitting != change.event_id:
            return  # another watcher finished it
        update = {"emitting": None, "emitted": change.fingerprint, "generation": state.generation + 1}
        self._write(bucket, key, state.model_copy(update=update), found[1])

    @staticmethod
    def _write(bucket: str, key: str, state: WatchState, etag: str | None) -> str:
        """A conditional write: lost to another watcher, it raises PreconditionFailed."""
        if etag is None:
            return storage.put_json(bucket, key, state.model_dump(), if_none_match=True)
        return storage.put_json(bucket, key, state.model_dump(), if_match=etag)


def watch(prefixes: list[str], emit: Callable[[Change], None], interval_s: float = DEFAULT_INTERVAL_S,
          debounce_s: float = DEFAULT_DEBOUNCE_S, polls: int | None = None, sleep=time.sleep) -> None:
    """Poll every prefix every interval_s and emit each settled change once; `polls` bounds the loop
    (None: until interrupted). A store or server that does not answer is logged and tried again at
    the next poll: nothing is lost, since the state says what was not announced yet."""
    watchers = [Watcher(prefix, debounce_s) for prefix in prefixes]
    done = 0
    while polls is None or done < polls:
        for watcher in watchers:
            try:
                change = watcher.poll()
                if change is not None:
                    emit(change)
                    watcher.announced(change)
                    log.info("announced %s: %s (%d objects)", EVENT, change.prefix, change.objects)
            except PreconditionFailed:
                log.info("%s: another watcher wrote its state first; reading it again next poll",
                         watcher.prefix)
            except (TransferflowError, OSError) as exc:
                log.warning("%s: %s; trying again in %.0fs", watcher.prefix, exc, interval_s)
        done += 1
        if polls is None or done < polls:
            sleep(interval_s)
