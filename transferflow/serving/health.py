"""What the server says about itself, decided in one place: readiness (/readyz) and TF Serving's
model status (GET /v1/models/NAME), from the slot, the followed alias and the batcher.

Ready means: a verified version answers, the batcher runs, and the server is not stuck on a
version older than its alias for longer than the grace period (stale_after_s). A version that
failed to load shows in the model status as TF Serving shows one: state END with its error,
beside the version still AVAILABLE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from transferflow.serving.versions import ModelSlot, ServedVersion

OK = {"error_code": "OK", "error_message": ""}


@dataclass(frozen=True)
class SwapFailure:
    """The last failed attempt to load the version the alias points at."""

    version: int
    error: str
    attempts: int
    retry_in_s: float


class ServingHealth:
    """The followed alias's version and since when it differs from the one answering, the last
    failed swap, and the grace period after which being behind makes the server unready.
    Written by the follower's thread, read by the event loop: each update is one assignment."""

    def __init__(self, stale_after_s: float, clock: Callable[[], float] = time.monotonic):
        self.stale_after_s, self.clock = stale_after_s, clock
        self._lock = threading.Lock()
        self.wanted: int | None = None  # the version the alias points at (None: pinned, or no alias)
        self.wanted_since: float = 0.0
        self.failure: SwapFailure | None = None

    def alias_points_at(self, version: int | None) -> None:
        with self._lock:
            if version != self.wanted:
                self.wanted, self.wanted_since, self.failure = version, self.clock(), None

    def swap_failed(self, failure: SwapFailure) -> None:
        self.failure = failure

    def swapped(self) -> None:
        self.failure = None

    def behind_s(self, current: ServedVersion | None) -> float | None:
        """How long the alias has pointed at a version other than the one answering; None if not."""
        if self.wanted is None or current is None or current.version == self.wanted:
            return None
        return self.clock() - self.wanted_since

    def readiness(self, name: str, current: ServedVersion | None, batcher_running: bool) -> tuple[int, dict]:
        """(HTTP status, body) of /readyz."""
        if current is None:
            return 503, {"status": "loading", "model": name, **self._failure_fields()}
        body = {"model": current.name, "version": current.version}
        if not batcher_running:
            return 503, {"status": "broken", **body,
                         "reason": "the micro-batcher stopped; restart the server"}
        behind = self.behind_s(current)
        if behind is None:
            return 200, {"status": "ready", **body}
        fields = {**body, "alias_version": self.wanted, "behind_s": round(behind, 1),
                  **self._failure_fields()}
        if behind > self.stale_after_s:
            reason = (f"the alias points at version {self.wanted} but version {current.version} still "
                      f"answers after {behind:.0f} s (--stale-after-s {self.stale_after_s:g})")
            return 503, {"status": "stale", **fields, "reason": reason}
        return 200, {"status": "ready", **fields}

    def _failure_fields(self) -> dict:
        failure = self.failure
        if failure is None:
            return {}
        return {"swap_error": failure.error, "swap_attempts": failure.attempts,
                "retry_in_s": round(failure.retry_in_s, 1)}

    def version_states(self, slot: ModelSlot) -> list[dict]:
        """TF Serving's model_version_status entries: a version loading (LOADING), one that failed
        to load (END, with its error), and the one answering (AVAILABLE)."""
        statuses = []
        failure = self.failure
        if slot.loading is not None:
            statuses.append({"version": str(slot.loading), "state": "LOADING", "status": OK})
        elif failure is not None and (slot.current is None or failure.version != slot.current.version):
            statuses.append({"version": str(failure.version), "state": "END",
                             "status": {"error_code": "UNKNOWN", "error_message": failure.error}})
        if slot.current is not None:
            statuses.append({"version": str(slot.current.version), "state": "AVAILABLE", "status": OK})
        return statuses
