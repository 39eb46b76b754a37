"""Training on a Ray cluster (engine ray): both phases under Ray Train's TensorflowTrainer on the
session's 2-node local cluster (the `ray_cluster` fixture), against the session's SeaweedFS.

Small on purpose (32 px, a random-weights VGG16, a few epochs): every Ray training here starts
its own worker processes, which is most of its cost on 2 cores.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest

from tests.conftest import Lines
from transferflow import storage
from transferflow.config import RetrainConfig
from transferflow.pipeline import phases
from transferflow.publishing import stages as publishing
from transferflow.registry import Registry
from transferflow.reporting.report import run_report

pytestmark = pytest.mark.slow

WORKER_STARTED = re.compile(r"Ray worker (\d+) of \d+ started on \S+ \(pid (\d+)\)")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """3 learnable classes x 40 images at 32 px: enough test images (36) for a 2-point comparison
    to mean something."""
    from transferflow.devstack.samples import write_dataset

    return write_dataset(tmp_path_factory.mktemp("ray-data") / "shapes", classes=3, per_class=40)


@pytest.fixture
def ray_connection(ray_cluster):
    """This process connected to the session's cluster, to look at its resources."""
    import ray

    opened = not ray.is_initialized()
    if opened:
        ray.init(address=os.environ["RAY_ADDRESS"], configure_logging=False)
    yield ray
    if opened:
        ray.shutdown()


def recording_logger(name: str) -> tuple[logging.Logger, Lines]:
    logger, lines = logging.getLogger(f"test.ray.{name}"), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    return logger, lines


def ray_config(dataset, weights, **overrides) -> RetrainConfig:
    settings = dict(dataset=str(dataset), backbone="vgg16", weights=str(weights), image_size=32, batch_size=8,
                    head_epochs=5, fine_tune_epochs=0, patience=10, val_fraction=0.2, test_fraction=0.3,
                    calibrate=False, cache_features=False, engine="ray", num_workers=2)
    return RetrainConfig(**(settings | overrides))


def prepare(config: RetrainConfig):
    """The dataset and backbone, prepared in this process (preparation on Ray is tested elsewhere),
    in the in-memory format: training reads both formats alike, and the streamed one costs ~20 s more
    here on its first epoch (AutoGraph traces the shard download; see the report)."""
    local = config.model_copy(update={"engine": "local"})
    dataset = phases.download_dataset(local)
    return dataset, phases.build_backbone(local, dataset)


def worker_pids(lines: Lines) -> dict[int, int]:
    """rank -> pid of the latest worker group, from the log."""
    return {int(rank): int(pid) for line in lines.lines for rank, pid in WORKER_STARTED.findall(line)}


def test_two_workers_register_a_model_as_accurate_as_training_in_process(ray_cluster, bucket, shapes,
                                                                         random_weights):
    # No checkpoints (one every 10,000 steps): this test is about accuracy, the next about checkpoints.
    config = ray_config(shapes, random_weights, checkpoint_every_steps=10_000)
    dataset, backbone = prepare(config)
    logger, lines = recording_logger("two")
    progress = []
    head = phases.train_head(config, dataset, backbone, "two-workers", logger=logger,
                             on_epoch=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (5, 5)  # the progress artifact's callback, moved from the chief's epochs
    assert any(line.startswith("head epoch 5/5") for line in lines.lines)  # the chief's log, relayed
    cluster = head.ran_on["cluster"]
    assert (cluster["nodes"], cluster["workers"], cluster["attempts"]) == (2, 2, 1)
    assert head.metrics["compute"]["strategy"] == "multi_worker_mirrored"
    assert head.metrics["compute"]["replicas"] == 2  # a step saw 2 x 8 images

    evaluation = publishing.evaluate_model(config, dataset, head.model_uri)
    gate = phases.decide_fine_tune(config, dataset, head)
    metadata = publishing.build_metadata(config, dataset, backbone, head, gate, None, evaluation, None)
    registered = publishing.register_model(config, metadata, head, "two-workers")
    stored = Registry().record(registered.name, registered.version)
    assert stored.training["head"]["cluster"]["workers"] == 2
    assert stored.parameters["engine"] == "ray"
    report = run_report(stored, registered)  # the run's report: a local run's, plus where it trained
    assert "- head on Ray: 2 workers on 2 nodes (2 CPUs, 0 GPUs), 1 attempt(s)" in report

    # The baseline: the same training in this process (engine local, what a run without Ray does);
    # a 1-worker Ray run is the killed test's head phase, below.
    local = config.model_copy(update={"engine": "local"})
    one = phases.train_head(local, dataset, backbone, "one-worker")
    alone = publishing.evaluate_model(local, dataset, one.model_uri).test.metrics["accuracy"]
    together = stored.metrics.test.accuracy
    assert alone >= 0.9, "the local baseline did not learn the classes"
    assert abs(together - alone) <= 0.02, f"2 Ray workers {together:.3f} vs in process {alone:.3f}"


def test_a_worker_killed_mid_training_is_replaced_and_the_phase_resumes(ray_cluster, bucket, shapes,
                                                                        random_weights):
    config = ray_config(shapes, random_weights, cache_features=True, head_epochs=3, fine_tune_epochs=3,
                        fine_tune_blocks=1)
    dataset, backbone = prepare(config)
    head = phases.train_head(config, dataset, backbone, "killed")  # on cached features: one worker
    assert head.ran_on["cluster"]["workers"] == 1
    assert head.metrics["features"]["source"] == "computed"

    logger, lines = recording_logger("killed")
    killed = []

    def kill_rank_one(done: int, total: int) -> None:
        """After epoch 2 (so the checkpoint of epoch 1 is complete), SIGKILL the worker of rank 1, once."""
        if done == 2 and not killed:
            killed.append(worker_pids(lines)[1])
            os.kill(killed[0], signal.SIGKILL)

    fine = phases.fine_tune(config, dataset, head, "killed", logger=logger, on_epoch=kill_rank_one)
    assert killed, "the phase ended before the worker could be killed"
    assert fine.tuned.ran_on["cluster"]["attempts"] == 2
    assert any("a Ray worker failed and Ray Train restarted the group of 2 workers" in line
               for line in lines.lines)
    resumed = re.compile(r"fine_tune: resuming from the checkpoint after epoch [12] ")
    assert any(resumed.match(line) for line in lines.lines)
    assert fine.tuned.metrics["epochs_run"] == 3  # the epochs before the failure count, none twice
    assert fine.tuned.metrics["resumed_from_epoch"] in (1, 2)
    assert worker_pids(lines)[1] != killed[0]  # a new worker took rank 1


def test_an_interrupted_phase_stops_its_ray_work(ray_connection, bucket, shapes, random_weights):
    """What a Prefect timeout or cancellation does to the task's thread (an exception raised in it)
    stops the Ray Train run: its workers exit and the cluster's CPUs are free for the next run."""
    ray = ray_connection
    config = ray_config(shapes, random_weights, head_epochs=200)
    dataset, backbone = prepare(config)
    logger, lines = recording_logger("interrupted")

    class Interrupted(Exception):
        pass

    def interrupt(done: int, total: int) -> None:
        raise Interrupted("stand-in for Prefect's TaskRunTimeoutError")

    with pytest.raises(Interrupted):
        phases.train_head(config, dataset, backbone, "interrupted", logger=logger, on_epoch=interrupt)
    assert any("head on Ray: stopping its Ray Train run (Interrupted)" in line for line in lines.lines)
    pids = worker_pids(lines).values()
    assert len(pids) == 2
    assert wait_until(lambda: not any(alive(pid) for pid in pids)), "a Ray Train worker is still running"
    total = ray.cluster_resources()["CPU"]
    assert wait_until(lambda: ray.available_resources().get("CPU", 0) == total), "CPUs still reserved"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has exited; only its parent has not reaped it
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, limit_s: float = 60.0) -> bool:
    """Whether `condition` came true within a generous limit (Ray stops processes asynchronously)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


def test_a_worker_that_is_not_the_chief_resumes_from_its_checkpoint_and_writes_none(bucket):
    """The scratch checkpoint of MultiWorkerMirroredStrategy's other workers, without Ray: it resumes
    from the chief's checkpoint in object storage and leaves it as it found it."""
    import keras
    import numpy as np

    from transferflow.training.checkpoints import POINTER
    from transferflow.training.fit import fit_phase

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    data = (x, (x[:, 0] > 0).astype("int32"))
    uri = f"s3://{bucket}/runs/r/checkpoints/head"
    settings = dict(learning_rate=0.05, batch_size=16, patience=10, seed=0, checkpoint_uri=uri)
    fit_phase(model(), "head", data, data, epochs=2, **settings)  # the chief's first attempt
    before = {o["Key"]: o["ETag"] for o in storage.list_keys(bucket, "runs/r/checkpoints/head/")}

    logger, lines = recording_logger("scratch")
    other = fit_phase(model(), "head", data, data, epochs=4, logger=logger, checkpoint_scratch=True,
                      **settings)
    assert other.resumed_from_epoch == 2 and other.epochs_run == 4
    assert any("resuming from the checkpoint after epoch 2" in line for line in lines.lines)
    after = {o["Key"]: o["ETag"] for o in storage.list_keys(bucket, "runs/r/checkpoints/head/")}
    assert after == before  # nothing written, nothing pruned
    assert storage.get_json(bucket, f"runs/r/checkpoints/head/{POINTER}")[0]["epoch"] == 2
