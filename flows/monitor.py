"""The monitor flow: wiring only. Deployed as `monitor/scheduled` (hourly), it judges every new
serving window of each model against its version's reference, publishes a table and a chart, and
emits transferflow.model.drift for each version whose windows drifted."""

from prefect import flow
from prefect.runtime import flow_run

from transferflow.monitoring.drift import DEFAULT_ALPHA, MIN_IMAGES
from transferflow.monitoring.monitor import monitored_models, versions_of
from transferflow_tasks.credentials import use_credentials_block
from transferflow_tasks.monitoring import announce_drift, check_drift, publish_monitor_report


def monitor_run_name() -> str:
    return f"monitor-{flow_run.parameters.get('model') or 'all'}"


@flow(name="monitor", flow_run_name=monitor_run_name,
      description="Compare served models' monitoring windows with their references; emit drift events.")
def monitor(model: str | None = None, since_hours: float = 48.0, alpha: float = DEFAULT_ALPHA,
            min_images: int = MIN_IMAGES) -> dict:
    """`model`: NAME (every served version), NAME:VERSION or NAME@ALIAS; unset: every model with
    windows. Windows whose period started more than since_hours ago are not looked at."""
    use_credentials_block()
    drifted = {}
    for name in [model.split("@")[0].split(":")[0]] if model else monitored_models():
        reports = check_drift(name, versions_of(model) if model else None, since_hours, alpha, min_images)
        publish_monitor_report(name, reports, alpha)
        for version in sorted({report.version for report in reports if report.drift}):
            announce_drift(name, version, [r for r in reports if r.version == version and r.drift])
            drifted.setdefault(name, []).append(version)
    return {"drifted": drifted}
