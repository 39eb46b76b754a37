"""What a training on Ray tells the process that submitted it, while it runs: the chief worker's
log lines and epoch progress, each worker's start (rank, host, pid), and at the end the phase's
outcome or the transferflow error that stopped it.

The messages go through a small actor (no CPU reserved) that the submitting process empties every
poll, so the Prefect run logger and progress artifact move as they do for a local training. Only
the chief (rank 0) sends log lines and progress: the others would repeat them.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

LOG, EPOCH, STARTED, OUTCOME, FAILED = "log", "epoch", "started", "outcome", "failed"


class Mailbox:
    """The actor: messages in the order they were posted, taken all at once."""

    def __init__(self):
        self.items: list[tuple] = []

    def post(self, item: tuple) -> None:
        self.items.append(item)

    def take(self) -> list[tuple]:
        items, self.items = self.items, []
        return items


def open_mailbox():
    """A Mailbox actor on the cluster; it reserves no CPU, so it never waits for a training's."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=0)(Mailbox).remote()


class WorkerRelay:
    """A worker's side: `send` posts a message; `logger` is what the phase code logs to."""

    def __init__(self, mailbox, rank: int, phase: str):
        self.mailbox, self.rank, self.phase = mailbox, rank, phase
        self.logger = RelayLogger(self) if rank == 0 else logging.getLogger(f"transferflow.ray.rank{rank}")

    def send(self, kind: str, *payload) -> None:
        import ray

        ray.get(self.mailbox.post.remote((kind, *payload)))

    def started(self, world_size: int) -> None:
        self.send(STARTED, self.rank, world_size, socket.gethostname(), os.getpid())

    def on_epoch(self, done: int, total: int) -> None:
        self.send(EPOCH, done, total)


class RelayLogger:
    """A logger for the chief: each line goes to the submitting process (and this worker's log)."""

    def __init__(self, relay: WorkerRelay):
        self.relay = relay

    def log(self, level: int, message: str, *args) -> None:
        text = message % args if args else message
        log.log(level, "%s", text)
        self.relay.send(LOG, level, text)

    def debug(self, message: str, *args) -> None:
        self.log(logging.DEBUG, message, *args)

    def info(self, message: str, *args) -> None:
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args) -> None:
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args) -> None:
        self.log(logging.ERROR, message, *args)


@dataclass
class Forwarder:
    """The submitting process's side: hands each message to its logger and progress callback, and
    keeps the outcome, the error, the workers and the number of attempts (a worker group restarted
    by Ray after a failure starts a new attempt)."""

    logger: logging.Logger | logging.LoggerAdapter
    phase: str
    max_failures: int
    on_epoch: Callable[[int, int], None] | None = None
    outcome: dict | None = None
    error: BaseException | None = None
    attempts: int = 0
    workers: dict[int, dict] = field(default_factory=dict)

    def pump(self, mailbox) -> None:
        """Take and handle every message posted so far."""
        import ray

        for kind, *payload in ray.get(mailbox.take.remote()):
            getattr(self, f"_on_{kind}")(*payload)

    def _on_log(self, level: int, text: str) -> None:
        self.logger.log(level, "%s", text)

    def _on_epoch(self, done: int, total: int) -> None:
        if self.on_epoch is not None:
            self.on_epoch(done, total)

    def _on_started(self, rank: int, world_size: int, host: str, pid: int) -> None:
        self.workers[rank] = {"host": host, "pid": pid}
        self.logger.info("%s: Ray worker %d of %d started on %s (pid %d)", self.phase, rank, world_size,
                         host, pid)
        if rank != 0:
            return
        self.attempts += 1
        if self.attempts > 1:
            self.logger.warning("%s: a Ray worker failed and Ray Train restarted the group of %d workers "
                                "(restart %d of at most %d): training resumes from the last checkpoint "
                                "in object storage", self.phase, world_size, self.attempts - 1,
                                self.max_failures)

    def _on_outcome(self, outcome: dict) -> None:
        self.outcome = outcome

    def _on_failed(self, error: BaseException) -> None:
        self.error = error
