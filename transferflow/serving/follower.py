"""Following an alias: load the version a reference names, then poll the alias's ETag and swap in
each version it is moved to (promote or rollback), verified and warmed up before it answers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from transferflow import storage
from transferflow.errors import RegistryError, StorageError, TransferflowError
from transferflow.registry import AliasDocument
from transferflow.registry.layout import alias_key, parse_reference
from transferflow.serving.health import ServingHealth, SwapFailure
from transferflow.serving.versions import ModelSlot, ServedVersion, load_version

log = logging.getLogger(__name__)

Loader = Callable[[str, int], ServedVersion]
MAX_BACKOFF_S = 300.0  # the longest wait between two attempts at a version that failed to load


def backoff_s(poll_seconds: float, attempts: int) -> float:
    """The wait before the next attempt after `attempts` failed ones: one poll, doubling, capped."""
    return min(poll_seconds * 2 ** (attempts - 1), max(MAX_BACKOFF_S, poll_seconds))


@dataclass(frozen=True)
class Reference:
    """What `transferflow serve REF` serves: NAME:VERSION (pinned) or NAME[@ALIAS] (followed)."""

    name: str
    alias: str | None  # None: pinned to `version`
    version: int | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        name, version, alias = parse_reference(text)
        if version is not None:
            return cls(name, None, version)
        return cls(name, alias or "latest", None)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}:{self.version}"


class AliasFollower(threading.Thread):
    """Loads the first version, then, for an alias, checks it every poll_seconds.

    A HEAD request per poll: the alias document is read only when its ETag changed. A new
    version is downloaded, verified, loaded and warmed up here, off the request path, and only
    then swapped in; until that succeeds the old version keeps answering. A failure to load the
    first version is fatal (on_fatal). A later version that fails to load is tried again with
    backoff (one poll, doubling up to MAX_BACKOFF_S) until it loads or the alias moves; each
    failure is reported (on_failure, and `health`, which the model status and /readyz show).
    """

    def __init__(self, reference: Reference, slot: ModelSlot, poll_seconds: float, *,
                 on_swap: Callable[[ServedVersion | None, ServedVersion], None],
                 on_fatal: Callable[[BaseException], None], loader: Loader = load_version,
                 health: ServingHealth | None = None,
                 on_failure: Callable[[int, BaseException], None] = lambda version, exc: None):
        super().__init__(name=f"follow {reference}", daemon=True)
        self.reference, self.slot, self.poll_seconds = reference, slot, poll_seconds
        self.on_swap, self.on_fatal, self.loader = on_swap, on_fatal, loader
        self.health, self.on_failure = health or ServingHealth(float("inf")), on_failure
        self.stopped = threading.Event()
        self.etag: str | None = None
        self.key = alias_key(reference.name, reference.alias) if reference.alias else None
        self.attempts, self.retry_at = 0, 0.0  # failed attempts at the alias's version, next try

    def run(self) -> None:
        try:
            self.install(self.first_version())
        except Exception as exc:  # the server cannot serve anything: it stops and says why
            self.on_fatal(exc)
            return
        while self.key and not self.stopped.wait(self.poll_seconds):
            self.check()

    def stop(self) -> None:
        self.stopped.set()

    def first_version(self) -> int:
        if self.key is None:
            return self.reference.version
        document, self.etag = self.read_alias()
        self.health.alias_points_at(document.version)
        return document.version

    def read_alias(self) -> tuple[AliasDocument, str]:
        found = storage.get_json(storage.bucket_name(), self.key)
        if found is None:
            raise RegistryError(f"{self.reference} does not exist; see `transferflow models list`, "
                                f"or promote a version: `transferflow models promote "
                                f"{self.reference.name}:N --alias {self.reference.alias}`")
        return AliasDocument.model_validate(found[0]), found[1]

    def install(self, version: int) -> None:
        self.slot.loading = version
        try:
            served = self.loader(self.reference.name, version)
        finally:
            self.slot.loading = None
        self.on_swap(self.slot.swap(served), served)

    def check(self) -> bool:
        """One poll; True when another version was swapped in. Never raises: the thread must go on
        following the alias whatever one poll met."""
        try:
            self.poll_alias()
        except StorageError as exc:  # transient: the same ETag is seen as new at the next poll
            log.warning("cannot check %s: %s; still serving %s, retrying in %g s", self.reference, exc,
                        self.serving, self.poll_seconds)
        except TransferflowError as exc:  # an alias document that cannot be read: wait for the next move
            log.error("cannot read %s: %s; still serving %s", self.reference, exc, self.serving)
        return self.catch_up()

    @property
    def serving(self) -> str:
        return self.slot.current.label if self.slot.current else "nothing"

    def poll_alias(self) -> None:
        """Note the version the alias points at now (the document is read only when its ETag moved)."""
        head = storage.head(storage.bucket_name(), self.key)
        if head is None:
            if self.etag is not None:
                log.warning("%s was deleted; still serving %s", self.reference, self.serving)
            self.etag = None
            self.health.alias_points_at(None)
            return
        if head.get("ETag") == self.etag:
            return
        document, self.etag = self.read_alias()
        if document.version != self.health.wanted:
            self.attempts, self.retry_at = 0, 0.0  # a new target: try it at once
        self.health.alias_points_at(document.version)

    def catch_up(self) -> bool:
        """Load the alias's version if another one answers and its next attempt is due."""
        wanted, current = self.health.wanted, self.slot.current
        if wanted is None or (current is not None and current.version == wanted):
            return False
        if time.monotonic() < self.retry_at:
            return False
        try:
            self.install(wanted)
        except Exception as exc:  # a bad version, a download that failed, a model Keras cannot load
            self.failed(wanted, exc)
            return False
        self.attempts, self.retry_at = 0, 0.0
        self.health.swapped()
        return True

    def failed(self, version: int, exc: Exception) -> None:
        self.attempts += 1
        wait = backoff_s(self.poll_seconds, self.attempts)
        self.retry_at = time.monotonic() + wait
        error = str(exc) if isinstance(exc, TransferflowError) else f"{type(exc).__name__}: {exc}"
        self.health.swap_failed(SwapFailure(version, error, self.attempts, wait))
        self.on_failure(version, exc)
        message = (f"{self.reference} points at version {version}, which cannot be served (attempt "
                   f"{self.attempts}): %s; still serving {self.serving}, retrying in {wait:g} s")
        if isinstance(exc, TransferflowError):
            log.error(message, exc)
        else:  # a bug or a model Keras cannot load: logged with its traceback
            log.exception(message, type(exc).__name__)
