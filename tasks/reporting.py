from datetime import UTC, datetime

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from transferflow import storage
from transferflow.registry.documents import Registration, TrainingRecord
from transferflow.reporting.charts import confusion_matrix_png, learning_curve_png
from transferflow.reporting.report import run_report
from transferflow_tasks.policies import IO_RETRIES, IO_RETRY_DELAYS, retry_transient

CURVE_URL_LIFETIME_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live


@task(name="publish_report", retries=IO_RETRIES, retry_delay_seconds=IO_RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def publish_report(metadata: TrainingRecord, registered: Registration, timings: dict | None = None) -> None:
    """The run's report in the UI: markdown summary, where the time went (`timings`: every stage
    until now), per-class table, model link, learning curve and confusion matrix (PNGs in the bucket,
    shown through presigned links)."""
    name, version = registered.name, registered.version
    bucket, prefix = storage.bucket_name(), f"reports/{name}/{version:06d}"
    histories = [m.history for m in (metadata.metrics.head, metadata.metrics.fine_tune) if m is not None]
    curve_url = _put_chart(bucket, f"{prefix}/learning_curve.png", learning_curve_png(histories))
    test = metadata.metrics.test
    confusion_url = None
    if test is not None and test.confusion_matrix:
        confusion_url = _put_chart(bucket, f"{prefix}/confusion_matrix.png",
                                   confusion_matrix_png(test.confusion_matrix, metadata.classes))
    elapsed = _seconds_since_flow_start()
    create_markdown_artifact(run_report(metadata, registered, curve_url, elapsed, confusion_url, timings),
                             key="retrain-report", description=f"{name} version {version}")
    rows = [{"class": cls, "precision": row.precision, "recall": row.recall, "f1": row.f1,
             "test_accuracy": row.accuracy, "images": row.support}
            for cls, row in (test.per_class.items() if test is not None else ())]
    create_table_artifact(rows, key="per-class-accuracy", description="per-class test precision, recall, F1")
    location = storage.parse_s3_uri(registered.artifact_uri)
    create_link_artifact(storage.object_url(location.bucket, location.key), key="model-artifact",
                         link_text=registered.artifact_uri, description=f"{name}:{version} model.keras")
    get_run_logger().info("report published (charts under s3://%s/%s/)", bucket, prefix)


def _put_chart(bucket: str, key: str, png: bytes) -> str:
    """Upload a chart and return a presigned link to it (the report embeds it; never logged)."""
    storage.put_bytes(bucket, key, png, "image/png")
    return storage.presigned_get(bucket, key, CURVE_URL_LIFETIME_S)


def _seconds_since_flow_start() -> float | None:
    if not flow_run.id:
        return None
    with get_client(sync_client=True) as client:
        started = client.read_flow_run(flow_run.id).start_time
    return (datetime.now(UTC) - started).total_seconds() if started else None


@task(name="announce_registration")
def announce_registration(metadata: TrainingRecord, registered: Registration) -> None:
    """Emit transferflow.model.registered, for automations (deployments/prefect.yaml has one)."""
    name, version = registered.name, registered.version
    emit_event(
        event="transferflow.model.registered",
        resource={"prefect.resource.id": f"transferflow.model.{name}",
                  "prefect.resource.name": name, "transferflow.version": str(version)},
        payload={"name": name, "version": version, "reference": f"{name}:{version}",
                 "artifact_uri": registered.artifact_uri, "test_accuracy": metadata.test_accuracy,
                 "val_accuracy": metadata.metrics.head.val_accuracy,
                 "final_phase": metadata.gate.final_phase},
    )
    get_run_logger().info("emitted transferflow.model.registered for %s:%d", name, version)
