"""Following an alias: load the version a reference names, then poll the alias's ETag and swap in
each version it is moved to (promote or rollback), verified and warmed up before it answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from transferflow import storage
from transferflow.errors import RegistryError, StorageError, TransferflowError
from transferflow.registry import REF_RE, AliasDocument
from transferflow.registry.layout import alias_key
from transferflow.serving.versions import ModelSlot, ServedVersion, load_version

log = logging.getLogger(__name__)

Loader = Callable[[str, int], ServedVersion]


@dataclass(frozen=True)
class Reference:
    """What `transferflow serve REF` serves: NAME:VERSION (pinned) or NAME[@ALIAS] (followed)."""

    name: str
    alias: str | None  # None: pinned to `version`
    version: int | None

    @classmethod
    def parse(cls, text: str) -> Reference:
        match = REF_RE.match(text)
        if not match:
            raise RegistryError(f"{text!r} is not NAME, NAME:VERSION or NAME@ALIAS (e.g. flowers@production)")
        if match["version"]:
            return cls(match["name"], None, int(match["version"]))
        return cls(match["name"], match["alias"] or "latest", None)

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}:{self.version}"


class AliasFollower(threading.Thread):
    """Loads the first version, then, for an alias, checks it every poll_seconds.

    A HEAD request per poll: the alias document is read only when its ETag changed. A new
    version is downloaded, verified, loaded and warmed up here, off the request path, and only
    then swapped in; until that succeeds the old version keeps answering. A failure to load the
    first version is fatal (on_fatal); a failure to load a later one is logged and the old
    version stays.
    """

    def __init__(self, reference: Reference, slot: ModelSlot, poll_seconds: float, *,
                 on_swap: Callable[[ServedVersion | None, ServedVersion], None],
                 on_fatal: Callable[[BaseException], None], loader: Loader = load_version):
        super().__init__(name=f"follow {reference}", daemon=True)
        self.reference, self.slot, self.poll_seconds = reference, slot, poll_seconds
        self.on_swap, self.on_fatal, self.loader = on_swap, on_fatal, loader
        self.stopped = threading.Event()
        self.etag: str | None = None
        self.key = alias_key(reference.name, reference.alias) if reference.alias else None

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
        serving = self.slot.current.label if self.slot.current else "nothing"
        head = None
        try:
            head = storage.head(storage.bucket_name(), self.key)
            if head is None:
                if self.etag is not None:
                    log.warning("%s was deleted; still serving %s", self.reference, serving)
                self.etag = None
                return False
            if head.get("ETag") == self.etag:
                return False
            document, etag = self.read_alias()
            if self.slot.current is None or document.version != self.slot.current.version:
                self.install(document.version)
            self.etag = etag
            return True
        except StorageError as exc:  # transient: the same ETag is seen as new at the next poll
            log.warning("cannot check %s: %s; still serving %s, retrying in %g s", self.reference, exc,
                        serving, self.poll_seconds)
        except TransferflowError as exc:  # the version itself is bad: wait for the alias to move again
            self.etag = head.get("ETag") if head else self.etag
            log.error("%s moved, but its version cannot be served: %s; still serving %s", self.reference,
                      exc, serving)
        except Exception:  # a bug or a model Keras cannot load: logged with its traceback
            self.etag = head.get("ETag") if head else self.etag
            log.exception("%s moved, but loading its version failed; still serving %s", self.reference,
                          serving)
        return False
