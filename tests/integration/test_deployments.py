"""The deployment path on the real stack: SeaweedFS, `prefect server start`, the cpu and
gpu pools with one process worker each, and the deployments from deployments/prefect.yaml.
Runs are created through the REST API, the path the Prefect UI uses."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime

import pytest

from tests.conftest import upload_folder
from transferflow import storage
from transferflow.devstack import daemons, s3server
from transferflow.devstack.stack import Stack, api, deployments, down, up
from transferflow.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack_bucket(s3_server):
    name = f"stack-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(name)
    return name


@pytest.fixture(scope="module")
def watched(stack_bucket, sample_dataset):
    """The prefix the stack's watcher lists, holding the old data before the stack starts (the
    watcher's baseline: no event for it)."""
    return upload_folder(sample_dataset, stack_bucket, "incoming")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, stack_bucket, watched):
    port = s3server.free_ports(1)[0]
    stack = Stack(home=tmp_path_factory.mktemp("prefect"), port=port, poll_seconds=2,
                  worker_env={"TRANSFERFLOW_BUCKET": stack_bucket}, watch=[watched], debounce_s=8,
                  watch_interval_s=1)
    try:
        up(stack)
        yield stack
    finally:
        pids = [daemons.read_pid(stack.pid_file(n)) for n in ("server", "worker-cpu", "worker-gpu", "watch")]
        down(stack)
        for pid in filter(None, pids):  # nothing left behind: not the services, not their children
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)


def deployment_id(stack: Stack, name: str) -> str:
    flow, _, deployment = name.partition("/")
    return next(d["id"] for d in deployments(stack) if d["flow_name"] == flow and d["name"] == deployment)


def create_run(stack: Stack, name: str, parameters: dict) -> dict:
    return api(stack, "POST", f"/deployments/{deployment_id(stack, name)}/create_flow_run",
               {"parameters": parameters})


def wait_final(stack: Stack, run_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api(stack, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout}s")


def flow_runs_of(stack: Stack, flow_name: str) -> list[dict]:
    flows = {f["name"]: f["id"] for f in api(stack, "POST", "/flows/filter", {})}
    if flow_name not in flows:
        return []
    return api(stack, "POST", "/flow_runs/filter", {"flows": {"id": {"any_": [flows[flow_name]]}}})


def test_deployments_and_schedule_are_in_place(stack):
    names = {f"{d['flow_name']}/{d['name']}": d for d in deployments(stack)}
    assert {"retrain/manual", "retrain/scheduled", "retrain/on-data", "train/gpu",
            "evaluate/on-registration",
            "monitor/scheduled", "retrain/on-drift"} <= set(names)
    assert names["retrain/scheduled"]["parameters"] == {"config": {"if_changed": True}}
    on_data = names["retrain/on-data"]  # one run at a time; a run triggered meanwhile waits its turn
    assert on_data["global_concurrency_limit"]["limit"] == 1
    assert on_data["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert on_data["parameters"] == {"config": {"if_changed": True}}
    assert all(d["enforce_parameter_schema"] for d in names.values())
    [schedule] = names["retrain/scheduled"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 3 * * 1" and schedule["active"]
    assert names["retrain/manual"]["schedules"] == []
    [hourly] = names["monitor/scheduled"]["schedules"]
    assert hourly["schedule"]["cron"] == "5 * * * *" and hourly["active"]
    assert names["train/gpu"]["work_pool_name"] == "gpu"
    config_schema = names["retrain/manual"]["parameter_openapi_schema"]["definitions"]["RetrainConfig"]
    assert config_schema["properties"]["head_epochs"]["description"]
    backbone = names["retrain/manual"]["parameter_openapi_schema"]["definitions"]["Backbone"]
    assert "vgg16" in backbone["enum"]


def test_bad_parameters_are_refused_at_trigger_time(stack):
    with pytest.raises(urllib.error.HTTPError) as refused:
        create_run(stack, "retrain/manual", {"config": {"image_size": 8, "backbone": "alexnet"}})
    assert refused.value.code in (409, 422)
    assert "image_size" in refused.value.read().decode()


def test_manual_run_trains_on_the_gpu_pool_and_registers(stack, stack_bucket, sample_dataset,
                                                         random_weights):
    storage.upload_file(random_weights, stack_bucket, "weights/vgg16.weights.h5")
    dataset = upload_folder(sample_dataset, stack_bucket, "sources/shapes")
    config = {"dataset": dataset, "weights": f"s3://{stack_bucket}/weights/vgg16.weights.h5",
              "image_size": 32, "head_epochs": 4, "head_learning_rate": 0.01, "fine_tune_epochs": 1,
              "fine_tune_gate": 0.0, "batch_size": 16, "model_name": "stack-model"}
    parent = wait_final(stack, create_run(stack, "retrain/manual", {"config": config})["id"])
    assert parent["state_type"] == "COMPLETED", parent["state"]
    assert parent["work_pool_name"] == "cpu"
    assert parent["name"].startswith("shapes-vgg16-")

    children = flow_runs_of(stack, "train")
    assert sorted(c["name"].rsplit("-", 2)[0] for c in children) == ["shapes-vgg16-fine_tune",
                                                                     "shapes-vgg16-head"]
    for child in children:
        assert child["work_pool_name"] == "gpu" and child["state_type"] == "COMPLETED"
        assert child["parent_task_run_id"]  # shown as a subflow of the retrain run
    assert list(storage.list_keys(stack_bucket, f"runs/{parent['id']}/")) == []  # staging cleaned

    meta = Registry(stack_bucket).metadata("stack-model", 1)
    assert meta["lineage"]["flow_run_id"] == parent["id"]
    assert meta["metrics"]["fine_tune"]["epochs_run"] == 1
    for phase in ("head", "fine_tune"):  # pinned by the gpu pool's job variables
        assert meta["training"][phase]["cuda_visible_devices"] == "0"
    artifacts = api(stack, "POST", "/artifacts/filter",
                    {"artifacts": {"flow_run_id": {"any_": [parent["id"]]}}})
    assert {"retrain-report", "per-class-accuracy", "model-artifact"} <= {a["key"] for a in artifacts}
    progress = [a for a in api(stack, "POST", "/artifacts/filter",
                               {"artifacts": {"type": {"any_": ["progress"]}}})]
    assert len(progress) >= 2 and all(a["data"] == 100.0 for a in progress)

    # The example automation: the registration event starts evaluate/on-registration.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not flow_runs_of(stack, "evaluate"):
        time.sleep(2)
    [evaluation] = flow_runs_of(stack, "evaluate")
    assert evaluation["parameters"] == {"model": "stack-model:1"}
    assert wait_final(stack, evaluation["id"])["state_type"] == "COMPLETED"



def test_cancelling_the_parent_cancels_the_training_child(stack, stack_bucket, sample_dataset,
                                                         random_weights):
    storage.upload_file(random_weights, stack_bucket, "weights/vgg16.weights.h5")
    # A child that trains for minutes: the backbone every epoch, a tiny learning rate so
    # val_loss keeps improving (no early stop).
    config = {"dataset": upload_folder(sample_dataset, stack_bucket, "sources/shapes"),
              "weights": f"s3://{stack_bucket}/weights/vgg16.weights.h5", "image_size": 32,
              "head_epochs": 1000,
              "head_learning_rate": 1e-6, "patience": 100, "cache_features": False,
              "fine_tune_epochs": 0, "batch_size": 8, "model_name": "cancelled"}
    parent = create_run(stack, "retrain/manual", {"config": config})
    deadline = time.monotonic() + 240
    child = None
    while time.monotonic() < deadline and child is None:
        running = [c for c in flow_runs_of(stack, "train") if c["state_type"] == "RUNNING"
                   and c["parameters"]["config"]["model_name"] == "cancelled"]
        child = running[0] if running else None
        time.sleep(2)
    assert child is not None, "the training child never started"
    api(stack, "POST", f"/flow_runs/{parent['id']}/set_state",
        {"state": {"type": "CANCELLING", "message": "cancelled by the test"}, "force": True})
    assert wait_final(stack, parent["id"], timeout=180)["state_type"] == "CANCELLED"
    assert wait_final(stack, child["id"], timeout=180)["state_type"] == "CANCELLED"
    assert Registry(stack_bucket).versions("cancelled") == []


def stand_in_production(bucket: str, prefix: str, name: str) -> set[str]:
    """Production for the on-data test without a training run: the old data prepared with the default
    split settings, and a small model registered with that preparation's membership. Returns its
    train and val digests."""
    import keras

    from transferflow.data import PrepareOptions, prepare_dataset, read_membership
    from transferflow.training.model import save_to

    ref = prepare_dataset(prefix, PrepareOptions(32, 0.1, 0.1, seed=42), bucket=bucket)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(len(ref.class_names), activation="softmax")])
    sha, size = save_to(model, f"s3://{bucket}/staging/{name}.keras")
    membership = ref.membership
    metadata = {"classes": ref.class_names, "image_size": 32,
                "dataset": {"fingerprint": ref.fingerprint, "membership": {
                    "file": "splits.json.gz", "sha256": membership.sha256, "size": membership.size,
                    "images": membership.images}}}
    registry = Registry(bucket)
    version = registry.register(name, f"s3://{bucket}/staging/{name}.keras", sha, size, metadata, "stand-in",
                                extra_files={"splits.json.gz": (membership.uri, membership.sha256,
                                                                membership.size)}).version
    registry.promote(name, version, "production", reason="the on-data test's production")
    return set(read_membership(membership).digests("train", "val"))


def test_new_data_uploaded_in_three_parts_starts_one_on_data_run_judged_on_unseen_images(
        stack, stack_bucket, watched, random_weights, tmp_path):
    """The issue's check: with the stack up (watcher included), new images land in the watched
    prefix in three parts inside the debounce window: exactly one retrain/on-data run, trained on
    the final listing's fingerprint, and production compared only on images it never trained on."""
    from transferflow.devstack.samples import write_dataset
    from transferflow.retraining.watch import listing_fingerprint

    seen = stand_in_production(stack_bucket, watched, "ondata")
    storage.upload_file(random_weights, stack_bucket, "weights/vgg16.weights.h5")
    # test_fraction 0.2: production's val band (0.1-0.2) is in the new test split, so some are excluded
    config = {"weights": f"s3://{stack_bucket}/weights/vgg16.weights.h5", "image_size": 32, "head_epochs": 1,
              "fine_tune_epochs": 0, "calibrate": False, "train_on": "local", "model_name": "ondata",
              "promote_min_accuracy": 0.0, "if_changed": True, "test_fraction": 0.2}
    api(stack, "PATCH", f"/deployments/{deployment_id(stack, 'retrain/on-data')}",
        {"parameters": {"config": config}})
    new = write_dataset(tmp_path / "new", classes=3, per_class=9, seed=5)
    files = sorted(new.rglob("*.*"))
    for part in range(3):  # each part lands 2 s after the last, inside the 8 s window
        for path in files[part::3]:
            storage.upload_file(path, stack_bucket, f"incoming/{path.parent.name}/new_{path.name}")
        time.sleep(2)
    fingerprint = listing_fingerprint(watched)[0]

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not on_data_runs(stack):
        time.sleep(2)
    [run] = on_data_runs(stack)
    assert run["parameters"]["changed"] == {"dataset": watched, "fingerprint": fingerprint}
    # The same change announced again while the run is in flight: it waits, then finds nothing new.
    again = create_run(stack, "retrain/on-data", {"changed": run["parameters"]["changed"]})
    final = wait_final(stack, run["id"])
    assert final["state_type"] == "COMPLETED" and final["state_name"] == "Completed", final["state"]
    doubled = wait_final(stack, again["id"])
    assert doubled["state_name"] == "Skipped", doubled["state"]
    assert datetime.fromisoformat(doubled["start_time"]) >= datetime.fromisoformat(final["end_time"])
    time.sleep(8 + 4)  # a second event would have come by now
    assert {r["id"] for r in on_data_runs(stack)} == {run["id"], again["id"]}  # none but these two

    registry = Registry(stack_bucket)
    meta = registry.record("ondata", 2)
    assert meta.model_extra["change_check"]["source"] == fingerprint  # trained on the new listing
    test = registry.membership("ondata", 2).digests("test")
    assert "test" in meta.promotion.model_extra["comparisons"], meta.promotion.reason
    compared = meta.promotion.model_extra["comparisons"]["test"]
    assert compared["excluded"] == len([d for d in test if d in seen]) > 0
    assert compared["images"] == len(test) - compared["excluded"]
    assert meta.promotion.model_extra["production_version"] == 1


def on_data_runs(stack: Stack) -> list[dict]:
    return [r for r in flow_runs_of(stack, "retrain")
            if r["deployment_id"] == deployment_id(stack, "retrain/on-data")]
