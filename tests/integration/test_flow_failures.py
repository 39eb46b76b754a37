"""The failure branches of what runs on the stack, on Prefect's test server (real API, no
workers): a gpu-pool child that fails, is cancelled, is never picked up or runs too long fails
its parent; `train_on` gpu-pool without the train/gpu deployment is refused; and
evaluate/on-registration fails on a tampered artifact or an accuracy that does not reproduce."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError, RegistryError, TrainingError
from transferflow.pipeline.phases import PhaseOutcome
from transferflow_tasks import remote

LOG = logging.getLogger(__name__)


@pytest.fixture
def gpu_deployment(prefect_server, monkeypatch):
    """A `train/gpu` deployment with no worker behind it: its runs wait until the test moves them."""
    from prefect.client.orchestration import get_client

    monkeypatch.setattr(remote, "POLL_S", 0.2)
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(flow_id=client.create_flow_from_name("train"), name="gpu")
        yield deployment_id
        client.delete_deployment(deployment_id)


def config(**overrides) -> RetrainConfig:
    return RetrainConfig(dataset="unused", weights="none", **overrides)


def state_of(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def child_run(deployment_id, timeout: float = 20.0):
    """The first flow run of the deployment, once the parent has created it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(
                any_=[deployment_id])))
            if runs:
                return runs[0]
            time.sleep(0.2)
    raise AssertionError("the parent never started its train/gpu run")


def test_gpu_pool_is_refused_without_the_train_deployment(prefect_server):
    from prefect import flow

    @flow
    def choose(config: RetrainConfig) -> str:
        return remote.choose_training_target(config)

    with pytest.raises(ConfigError, match="train_on is gpu-pool but deployment train/gpu does not exist "
                                          "on this Prefect server: run `make deploy`"):
        choose(config(train_on="gpu-pool"))
    assert choose(config(train_on="auto")) == "local"  # auto falls back to training in-process


@pytest.mark.parametrize("ending", ["Failed", "Cancelled"])
def test_a_failed_or_cancelled_gpu_child_fails_the_parent(gpu_deployment, ending):
    from prefect import flow, states

    @flow
    def parent() -> PhaseOutcome:
        return remote.train_on_gpu_pool(config(), "head", "run-1", PhaseOutcome)

    def end_the_child():
        child = child_run(gpu_deployment)
        with_message = getattr(states, ending)(message="the worker ran out of GPU memory")
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.set_flow_run_state(child.id, with_message, force=True)

    ender = threading.Thread(target=end_the_child)
    ender.start()
    state = parent(return_state=True)
    ender.join()
    assert state.is_failed()
    with pytest.raises(TrainingError, match=f"head training run .* on the gpu pool ended {ending}: "
                                            "the worker ran out of GPU memory"):
        state.result()


def test_a_child_no_worker_picks_up_is_cancelled_after_the_limit(gpu_deployment):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        child = client.create_flow_run_from_deployment(gpu_deployment)
    started = time.monotonic()
    with pytest.raises(TrainingError, match="no gpu worker picked up .* it was cancelled. Start one with "
                                            "`make worker-gpu`"):
        remote._wait_for_child(child.id, 1.0, LOG)
    assert 1.0 <= time.monotonic() - started < 10
    assert state_of(child.id).type.value == "CANCELLED"  # never started: cancelled outright


def test_a_running_child_past_its_limit_and_grace_is_cancelled(gpu_deployment, monkeypatch):
    """The queue wait and the training time are bounded apart: the training clock starts when the
    child runs, so 1 s in the queue plus 1.5 s of limit and 1 s of grace end it after 3.5 s."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    monkeypatch.setattr(remote, "CHILD_GRACE_S", 1.0)
    with get_client(sync_client=True) as client:
        child = client.create_flow_run_from_deployment(gpu_deployment)

    def pick_up():
        time.sleep(1.0)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(child.id, Running(), force=True)

    worker = threading.Thread(target=pick_up)
    started = time.monotonic()
    worker.start()
    with pytest.raises(TrainingError, match="on the gpu pool ran past training_timeout_minutes .* it was "
                                            "cancelled"):
        remote._wait_for_child(child.id, 1.5, LOG)
    worker.join()
    assert 3.3 <= time.monotonic() - started < 12
    assert state_of(child.id).type.value == "CANCELLING"  # its worker stops it


# ---------------------------------------------------------------- evaluate/on-registration

@pytest.fixture
def registered(bucket, sample_dataset):
    """A small classifier registered as m:1 with its real test accuracy, and that accuracy."""
    from transferflow.data import PrepareOptions, load_prepared, prepare_dataset
    from transferflow.registry import Registry
    from transferflow.training import backbones
    from transferflow.training import model as modeling
    from transferflow.training.fit import evaluate

    dataset = prepare_dataset(str(sample_dataset), PrepareOptions(32, 0.1, 0.1, 0))
    spec = backbones.get_spec("mobilenet_v3_small")
    classifier = modeling.build_classifier(backbones.construct(spec, 32, None), spec, 3, 0.0)
    accuracy = evaluate(classifier, load_prepared(dataset).splits["test"], dataset.class_names)["accuracy"]

    def register(recorded: float) -> str:
        uri = f"s3://{bucket}/runs/r1/model.keras"
        sha, size = modeling.save_to(classifier, uri)
        metadata = {"dataset": {"prepared_uri": dataset.uri}, "classes": dataset.class_names,
                    "metrics": {"test": {"accuracy": recorded}}}
        Registry().register("m", uri, sha, size, metadata, "r1")
        return f"s3://{bucket}/models/m/versions/000001/model.keras"

    return register, accuracy


@pytest.mark.slow
def test_evaluation_reproduces_an_untouched_version(prefect_server, registered):
    from transferflow_flows.evaluate import evaluate_registered

    register, accuracy = registered
    register(accuracy)
    result = evaluate_registered(model="m:1", tolerance=0.0)
    assert result["reference"] == "m:1" and result["reproduced"] == pytest.approx(accuracy)


@pytest.mark.slow
def test_evaluation_fails_on_tampered_bytes(prefect_server, bucket, registered):
    from transferflow_flows.evaluate import evaluate_registered

    register, accuracy = registered
    artifact = storage.parse_s3_uri(register(accuracy))
    storage.put_bytes(artifact.bucket, artifact.key, b"not the registered model", "application/zip")
    state = evaluate_registered(model="m:1", return_state=True)
    assert state.is_failed()
    with pytest.raises(RegistryError, match="integrity check failed for m:1 .*: the stored artifact was "
                                            "altered after registration"):
        state.result()


@pytest.mark.slow
def test_evaluation_fails_when_the_accuracy_drifts(prefect_server, registered):
    from transferflow_flows.evaluate import evaluate_registered

    register, accuracy = registered
    recorded = accuracy + 0.3 if accuracy < 0.7 else accuracy - 0.3
    register(recorded)
    state = evaluate_registered(model="m:1", tolerance=0.01, return_state=True)
    assert state.is_failed()
    with pytest.raises(RegistryError, match=f"m:1 reproduces test accuracy {accuracy:.4f}, not the "
                                            f"recorded {recorded:.4f}"):
        state.result()
