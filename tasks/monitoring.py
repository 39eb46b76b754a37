from datetime import UTC, datetime, timedelta

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from prefect.logging import get_run_logger

from transferflow import storage
from transferflow.monitoring import monitor as monitoring
from transferflow.monitoring.chart import drift_chart_png
from transferflow.registry import Registry
from transferflow_tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient
from transferflow_tasks.reporting import _put_chart

HISTORY_DAYS = 7  # the chart's span


@task(name="check_drift", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def check_drift(name: str, versions: list[int] | None, since_hours: float, alpha: float,
                min_images: int) -> list[monitoring.WindowReport]:
    """Every window not judged yet (or grown by a late replica since), against its version's
    reference; each verdict is kept, so the next run skips it."""
    since = datetime.now(UTC) - timedelta(hours=since_hours)
    reports = monitoring.monitor_model(name, since, alpha, min_images, versions, logger=get_run_logger())
    drifted = [report.window for report in reports if report.drift]
    get_run_logger().info("%s: %d new windows judged, drift in %d%s", name, len(reports), len(drifted),
                          f" ({', '.join(drifted)})" if drifted else "")
    return reports


@task(name="publish_monitor_report", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def publish_monitor_report(name: str, judged: list[monitoring.WindowReport], alpha: float) -> None:
    """A table of this run's windows and a chart of the last week's verdicts."""
    history = monitoring.kept_verdicts(name, datetime.now(UTC) - timedelta(days=HISTORY_DAYS))
    key = "".join(c if c.isalnum() else "-" for c in name.lower())
    rows = [{"version": r.version, "window": r.window, "closed_at": r.closed_at, "replicas": len(r.replicas),
             "requests": r.requests, "images": r.images, "errors": r.errors, "drift": r.drift,
             **{f"p_{t.name}": t.p_adjusted for t in r.verdict.tests}} for r in judged]
    create_table_artifact(rows, key=f"monitor-{key}-windows",
                          description=f"{name}: windows judged in this run (Holm-adjusted p-values)")
    chart = ""
    if history:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        url = _put_chart(storage.bucket_name(), f"reports/monitoring/{name}/{stamp}.png",
                         drift_chart_png(history, alpha))
        chart = f"![drift tests over time]({url})\n\n"
    drifted = [r for r in history if r.drift]
    summary = (f"# {name}: drift monitor\n\n{len(judged)} new windows judged in this run; over the last "
               f"{HISTORY_DAYS} days {len(history)} windows, {len(drifted)} with drift "
               f"(family-wise alpha {alpha:g} per window, Holm over class mix, confidence and features).\n\n")
    create_markdown_artifact(summary + chart, key=f"monitor-{key}", description=f"{name} drift monitor")


@task(name="announce_drift")
def announce_drift(name: str, version: int, reports: list[monitoring.WindowReport]) -> None:
    """Emit transferflow.model.drift for a version whose new windows drifted: the latest one's
    numbers, and what a retrain would need (deployments/prefect.yaml has a trigger, off by default)."""
    latest = reports[-1]
    meta = Registry().record(name, version)
    emit_event(
        event="transferflow.model.drift",
        resource={"prefect.resource.id": f"transferflow.model.{name}", "prefect.resource.name": name,
                  "transferflow.version": str(version)},
        payload={"name": name, "version": version, "reference": f"{name}:{version}",
                 "windows": [r.window for r in reports], "window": latest.window,
                 "closed_at": latest.closed_at,
                 "requests": latest.requests, "images": latest.images, "alpha": latest.verdict.alpha,
                 "fired": latest.verdict.fired(),
                 "tests": {t.name: {"statistic": t.statistic, "p_value": t.p_value,
                                    "p_adjusted": t.p_adjusted} for t in latest.verdict.tests},
                 "dataset": (meta.parameters.get("dataset") if meta else None) or "",
                 "labeled_feedback": monitoring.labeled_feedback(name) or ""},
    )
    get_run_logger().info("emitted transferflow.model.drift for %s:%d (%d windows)", name, version,
                          len(reports))
