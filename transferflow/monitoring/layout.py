"""Every key that monitoring and feedback capture write, built here and nowhere else.

    monitoring/<name>/<000001>/windows/<period start>/<part>-<replica>.json
        one replica's summary of one window: the period (default 1 hour, UTC-aligned, so that the
        replicas' periods coincide) and, when a period fills up with --monitor-window-requests,
        its part; the replica id keeps replicas from ever writing the same key
    monitoring/<name>/<000001>/verdicts/<period start>-<part>.json
        the monitor's verdict on one window (all replicas' summaries of it merged)
    models/<name>/versions/<000001>/monitoring/reference-<sha256[:16]>.json
        the version's reference statistics (test and val splits), listed in its metadata.json
    feedback/<name>/unlabeled/<YYYY-MM-DD>/<time>-<replica>-<id>.<ext>  (+ .json sidecar)
        inputs captured by `serve --capture-rate/--capture-below-confidence`, as received
    feedback/<name>/labeled/<class>/...
        images a person has labelled: a class folder per class, usable as --extra-data
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

MONITORING = "monitoring"
FEEDBACK = "feedback"
STAMP = "%Y%m%dT%H%M%SZ"
WINDOW_RE = re.compile(r"/windows/(?P<period>\d{8}T\d{6}Z)/(?P<part>\d{4})-"
                       r"(?P<replica>[A-Za-z0-9._-]+)\.json$")


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP)


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, STAMP).replace(tzinfo=UTC)


def model_prefix(name: str) -> str:
    return f"{MONITORING}/{name}/"


def version_prefix(name: str, version: int) -> str:
    return f"{MONITORING}/{name}/{version:06d}/"


def windows_prefix(name: str, version: int) -> str:
    return f"{version_prefix(name, version)}windows/"


def window_key(name: str, version: int, period_start: datetime, part: int, replica: str) -> str:
    return f"{windows_prefix(name, version)}{stamp(period_start)}/{part:04d}-{replica}.json"


def verdict_key(name: str, version: int, window: WindowId) -> str:
    return f"{version_prefix(name, version)}verdicts/{window.period}-{window.part:04d}.json"


def reference_file(sha256: str) -> str:
    """Inside the version: named by content, like exports, so racing writers never collide."""
    return f"monitoring/reference-{sha256[:16]}.json"


def unlabeled_prefix(name: str) -> str:
    return f"{FEEDBACK}/{name}/unlabeled/"


def labeled_prefix(name: str) -> str:
    return f"{FEEDBACK}/{name}/labeled/"


@dataclass(frozen=True, order=True)
class WindowId:
    """A window as the monitor sees it: a period and a part, whatever replicas wrote it."""

    period: str  # the period's start, STAMP
    part: int

    @property
    def started(self) -> datetime:
        return parse_stamp(self.period)

    def __str__(self) -> str:
        return f"{self.period}#{self.part}"


def window_of_key(key: str) -> tuple[WindowId, str] | None:
    """(window, replica) of a window key; None for any other key."""
    match = WINDOW_RE.search(key)
    return (WindowId(match["period"], int(match["part"])), match["replica"]) if match else None
