"""Serving windows in object storage: the document a replica writes for a window, and reading them
back grouped by window (period and part), each group merged across the replicas that wrote it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from transferflow import storage
from transferflow.errors import MonitoringError
from transferflow.monitoring.layout import (
    WindowId,
    model_prefix,
    stamp,
    window_of_key,
    windows_prefix,
)
from transferflow.monitoring.sketch import SCHEMA, Sketch, from_document, merge, to_document


def window_document(sketch: Sketch, *, name: str, version: int, replica: str, period_start: datetime,
                    period_seconds: float, part: int, opened_at: datetime, closed_at: datetime,
                    closed_by: str) -> dict:
    return {"kind": "window", "schema": SCHEMA, "model": name, "version": version, "replica": replica,
            "period_start": period_start.isoformat(), "period_seconds": period_seconds, "part": part,
            "opened_at": opened_at.isoformat(timespec="milliseconds"),
            "closed_at": closed_at.isoformat(timespec="milliseconds"), "closed_by": closed_by,
            **to_document(sketch)}


@dataclass
class Window:
    """One window of one version: every replica's summary of it, merged."""

    name: str
    version: int
    id: WindowId
    keys: list[str]  # the summaries it was merged from, one per replica
    documents: list[dict]
    sketch: Sketch

    @property
    def replicas(self) -> list[str]:
        return sorted(document["replica"] for document in self.documents)

    @property
    def opened_at(self) -> str:
        return min(document["opened_at"] for document in self.documents)

    @property
    def closed_at(self) -> str:
        return max(document["closed_at"] for document in self.documents)


def served_versions(name: str, bucket: str | None = None) -> list[int]:
    """The versions of a model that have serving windows."""
    bucket = bucket or storage.bucket_name()
    children = storage.list_children(bucket, model_prefix(name))
    return sorted(int(child) for child in children if child.isdigit())


def window_keys(name: str, version: int, since: datetime | None = None,
                bucket: str | None = None) -> dict[WindowId, list[str]]:
    """The summaries written for each window of a version whose period starts at or after `since`,
    oldest window first (keys only: nothing is read)."""
    bucket = bucket or storage.bucket_name()
    first = stamp(since) if since else ""
    groups: dict[WindowId, list[str]] = {}
    for entry in storage.list_keys(bucket, windows_prefix(name, version)):
        found = window_of_key(entry["Key"])
        if found is None:
            continue
        window, _ = found
        if window.period >= first:
            groups.setdefault(window, []).append(entry["Key"])
    return {window: sorted(groups[window]) for window in sorted(groups)}


def read_window(name: str, version: int, window: WindowId, keys: list[str],
                bucket: str | None = None) -> Window:
    """The window's summaries, read and merged (a key deleted meanwhile is skipped)."""
    bucket = bucket or storage.bucket_name()
    documents = [found[0] for key in keys if (found := storage.get_json(bucket, key)) is not None]
    sketches = [from_document(document) for document in documents]
    kinds = {(tuple(sketch.classes), sketch.projection.checksum) for sketch in sketches}
    if len(kinds) > 1:
        raise MonitoringError(f"the replicas' summaries of {name}:{version} window {window} disagree on the "
                              "classes or the feature projection (replicas of different releases?): "
                              + ", ".join(keys))
    merged = merge(sketches, seed=window.part) if sketches else None
    return Window(name, version, window, keys, documents, merged)
