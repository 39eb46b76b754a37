"""The monitor: each window a version served, merged across replicas, compared with the version's
reference. The CLI (`transferflow monitor`) and the monitor flow both run it; the flow also keeps
each verdict, so that its next run judges only windows it has not seen (or that a late replica
has added to since)."""

from __future__ import annotations

import logging
from datetime import datetime

import numpy as np
from pydantic import BaseModel

from transferflow import storage
from transferflow.monitoring.drift import DEFAULT_ALPHA, MIN_IMAGES, Verdict, compare
from transferflow.monitoring.layout import WindowId, labeled_prefix, verdict_key, version_prefix
from transferflow.monitoring.reference import load_reference
from transferflow.monitoring.windows import Window, read_window, served_versions, window_keys

log = logging.getLogger(__name__)


class WindowReport(BaseModel):
    """One window and its verdict, as the CLI's --json, the flow's artifact and the event carry it."""

    model: str
    version: int
    window: str  # <period start>#<part>
    period_start: str
    part: int
    opened_at: str
    closed_at: str
    replicas: list[str]
    requests: int
    images: int
    errors: int
    dropped: int
    predicted: dict[str, int]
    mean_confidence: float | None
    drift: bool | None
    verdict: Verdict
    summaries: list[str]  # the window objects it merged, one per replica (a pydantic field named
    # `keys` would make Prefect take the model for a mapping)


def report_window(window: Window, reference, alpha: float, min_images: int) -> WindowReport:
    sketch = window.sketch
    verdict = compare(reference, sketch, alpha, min_images, seed=window.id.part)
    confidence = sketch.reservoir.rows()[0]
    return WindowReport(model=window.name, version=window.version, window=str(window.id),
                        period_start=window.id.started.isoformat(), part=window.id.part,
                        opened_at=window.opened_at, closed_at=window.closed_at, replicas=window.replicas,
                        requests=sketch.requests, images=sketch.images, errors=sketch.errors,
                        dropped=sketch.dropped, predicted=dict(zip(sketch.classes, sketch.predicted.tolist(),
                                                                   strict=True)),
                        mean_confidence=float(np.mean(confidence)) if len(confidence) else None,
                        drift=verdict.drift, verdict=verdict, summaries=window.keys)


def monitor_version(name: str, version: int, since: datetime | None = None, alpha: float = DEFAULT_ALPHA,
                    min_images: int = MIN_IMAGES, only_new: bool = False, logger=log) -> list[WindowReport]:
    """The verdict on every window of name:version since `since`; with only_new, only on windows
    without a kept verdict over the same summaries (the flow's way)."""
    groups = window_keys(name, version, since)
    if only_new:
        groups = {window: keys for window, keys in groups.items() if kept_keys(name, version, window) != keys}
    if not groups:
        return []
    reference = load_reference(name, version, logger=logger)
    reports = []
    for window, keys in groups.items():
        read = read_window(name, version, window, keys)
        if read.sketch is not None:
            reports.append(report_window(read, reference, alpha, min_images))
    return reports


def monitor_model(name: str, since: datetime | None = None, alpha: float = DEFAULT_ALPHA,
                  min_images: int = MIN_IMAGES, versions: list[int] | None = None,
                  logger=log) -> list[WindowReport]:
    """The flow's check: new windows of every served version (or of `versions`), verdicts kept."""
    reports = []
    for version in versions or served_versions(name):
        for report in monitor_version(name, version, since, alpha, min_images, only_new=True, logger=logger):
            keep_verdict(report)
            reports.append(report)
    return reports


def kept_keys(name: str, version: int, window: WindowId) -> list[str] | None:
    found = storage.get_json(storage.bucket_name(), verdict_key(name, version, window))
    return found[0].get("summaries") if found else None


def keep_verdict(report: WindowReport) -> None:
    window = WindowId(report.window.split("#")[0], report.part)
    key = verdict_key(report.model, report.version, window)
    storage.put_json(storage.bucket_name(), key, report.model_dump())


def kept_verdicts(name: str, since: datetime | None = None) -> list[WindowReport]:
    """Every kept verdict of the model's windows since `since`, oldest first (the chart's history)."""
    from transferflow.monitoring.layout import model_prefix, stamp

    bucket, first = storage.bucket_name(), stamp(since) if since else ""
    reports = []
    for entry in storage.list_keys(bucket, model_prefix(name)):
        key = entry["Key"]
        if "/verdicts/" in key and key.rsplit("/", 1)[-1] >= first:
            found = storage.get_json(bucket, key)
            if found:
                reports.append(WindowReport.model_validate(found[0]))
    return sorted(reports, key=lambda report: (report.period_start, report.part, report.version))


def labeled_feedback(name: str) -> str | None:
    """s3://.../feedback/<name>/labeled/ when a person has labelled any image there, else None."""
    bucket = storage.bucket_name()
    prefix = labeled_prefix(name)
    return f"s3://{bucket}/{prefix}" if next(iter(storage.list_keys(bucket, prefix)), None) else None


def has_windows(name: str, version: int) -> bool:
    found = storage.list_keys(storage.bucket_name(), version_prefix(name, version))
    return next(iter(found), None) is not None


def monitored_models() -> list[str]:
    """Every model that has monitoring windows in the bucket."""
    from transferflow.monitoring.layout import MONITORING

    return storage.list_children(storage.bucket_name(), f"{MONITORING}/")


def versions_of(reference: str) -> list[int] | None:
    """The one version NAME:VERSION or NAME@ALIAS names; None for a bare NAME (every version)."""
    from transferflow.registry import Registry

    if ":" not in reference and "@" not in reference:
        return None
    return [Registry().resolve(reference)[1]]
