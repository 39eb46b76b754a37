"""Preemption: a phase killed mid-training resumes from its last checkpoint in object storage."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests.conftest import Lines
from transferflow import storage
from transferflow.devstack.samples import sample_image
from transferflow.training.checkpoints import POINTER
from transferflow.training.fit import fit_phase


def learnable(n_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class).astype(np.int32)
    images = np.stack([sample_image(int(k), 32, rng) for k in labels]).astype("float32")
    return images.reshape(len(labels), -1)[:, :64] / 255.0, labels  # a tiny, fast problem


def head():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(3, activation="softmax")])


def test_a_retried_phase_resumes_from_its_checkpoint(bucket):
    train, val = learnable(20, 0), learnable(5, 1)
    uri = f"s3://{bucket}/runs/r1/checkpoints/head"
    settings = dict(learning_rate=0.05, batch_size=8, patience=10, seed=0, checkpoint_uri=uri)
    first = fit_phase(head(), "head", train, val, epochs=2, logger=logging.getLogger("a"), **settings)
    assert first.resumed_from_epoch is None
    assert storage.get_json(bucket, f"runs/r1/checkpoints/head/{POINTER}")[0]["epoch"] == 2

    logger, lines = logging.getLogger("b"), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    second = fit_phase(head(), "head", train, val, epochs=5, logger=logger, **settings)  # a fresh model
    assert second.resumed_from_epoch == 2
    assert any("resuming from the checkpoint after epoch 2" in line for line in lines.lines)
    assert second.epochs_run == 5 and len(second.history["loss"]) == 5
    assert second.history["loss"][:2] == first.history["loss"]  # the first attempt's epochs are kept
    kept = {o["Key"].rsplit("/", 1)[1] for o in storage.list_keys(bucket, "runs/r1/checkpoints/head/")}
    assert len([k for k in kept if k.endswith(".weights.h5")]) == 2  # checkpoint_keep


def test_checkpoints_follow_the_time_cadence_and_a_failed_upload_fails_the_phase(bucket, monkeypatch):
    from types import SimpleNamespace

    from transferflow.training import checkpoints

    train, val = learnable(20, 0), learnable(5, 1)
    settings = dict(epochs=4, learning_rate=0.05, batch_size=8, patience=10, seed=0,
                    logger=logging.getLogger("cadence"), checkpoint_interval_s=60)
    fit_phase(head(), "head", train, val, checkpoint_uri=f"s3://{bucket}/runs/r1/checkpoints/head",
              **settings)
    assert list(storage.list_keys(bucket, "runs/r1/")) == []  # sub-second epochs: none paid for

    ticks = iter(range(0, 10_000, 40))  # a clock on which 40 s pass between two readings
    monkeypatch.setattr(checkpoints, "time", SimpleNamespace(monotonic=lambda: float(next(ticks))))
    fit_phase(head(), "head", train, val, checkpoint_uri=f"s3://{bucket}/runs/r2/checkpoints/head",
              **settings)
    kept = sorted(o["Key"].rsplit("/", 1)[1] for o in storage.list_keys(bucket, "runs/r2/checkpoints/head/")
                  if o["Key"].endswith(".weights.h5"))
    assert kept == ["head-e0002-s000000.weights.h5", "head-e0004-s000000.weights.h5"]  # once 60 s passed
    assert storage.get_json(bucket, f"runs/r2/checkpoints/head/{POINTER}")[0]["epoch"] == 4

    def refused(*args, **kwargs):
        raise RuntimeError("the store refused the checkpoint")

    monkeypatch.setattr(checkpoints.storage, "put_json", refused)  # in the background upload
    with pytest.raises(RuntimeError, match="the store refused the checkpoint"):
        fit_phase(head(), "head", train, val, checkpoint_uri=f"s3://{bucket}/runs/r3/checkpoints/head",
                  **{**settings, "checkpoint_interval_s": 0})


PHASE = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from transferflow.pipeline import phases
    from transferflow.config import RetrainConfig
    config = RetrainConfig(dataset=sys.argv[1], weights=sys.argv[2], image_size=32, head_epochs=6, patience=6,
                           head_learning_rate=1e-2, batch_size=8, cache_features=False,
                           checkpoint_interval_s=0)  # a checkpoint after every epoch, to be killed after
    log = logging.getLogger("phase")
    dataset = phases.download_dataset(config, logger=log)
    backbone = phases.build_backbone(config, logger=log)
    outcome = phases.train_head(config, dataset, backbone, "preempted-run", logger=log)
    print("EPOCHS", outcome.metrics["epochs_run"], "RESUMED", outcome.metrics["resumed_from_epoch"])
    from transferflow.registry import Registry
    version = Registry().register("preempted", outcome.model_uri, outcome.sha256, outcome.size,
                                  {"metrics": outcome.metrics}, "preempted-run")
    print("VERSION", version.version)
""")


def test_sigkill_mid_epoch_then_rerun_resumes(bucket, sample_dataset, random_weights, tmp_path):
    """The worker process is killed outright (no cleanup runs); the next attempt continues."""
    command = [sys.executable, "-c", PHASE, str(sample_dataset), str(random_weights)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = "runs/preempted-run/checkpoints/head/" + POINTER
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and victim.poll() is None:
        found = storage.get_json(bucket, pointer)
        if found and found[0]["epoch"] >= 2:
            break
        time.sleep(0.2)
    assert victim.poll() is None, "training finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = storage.get_json(bucket, pointer)[0]["epoch"]
    assert 2 <= killed_at < 6

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming from the checkpoint after epoch {killed_at}" in rerun.stdout
    assert f"EPOCHS 6 RESUMED {killed_at}" in rerun.stdout
    from transferflow.registry import Registry

    assert "VERSION 1" in rerun.stdout and Registry().versions("preempted") == [1]  # registered once


# ------------------------------------------------- an exact resume from a mid-epoch checkpoint

N_TRAIN, BATCH, EPOCHS, EVERY = 60, 8, 3, 3  # 8 steps an epoch (the last one of 4 images)


def id_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tiny 4 px images whose first pixel is the example's id, and random labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images, rng.integers(0, 3, n).astype(np.int32)


def recording_model(seen: list, fail_at_step: int | None = None):
    """A small classifier with dropout that appends the ids of every training batch it is given
    to `seen`, and fails (as a preempted worker would) when given batch number `fail_at_step`."""
    import keras
    import tensorflow as tf

    def record(ids):
        if fail_at_step is not None and len(seen) + 1 == fail_at_step:
            raise RuntimeError("preempted")
        seen.append(ids.numpy().astype(int).tolist())
        return ids

    class Record(keras.layers.Layer):
        def call(self, x, training=None):
            if training:
                tf.py_function(record, [x[:, 0, 0, 0]], tf.float32)
            return x

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((4, 4, 3)), Record(), keras.layers.Rescaling(1 / 255),
                             keras.layers.Flatten(), keras.layers.Dropout(0.3),
                             keras.layers.Dense(3, activation="softmax")])


def streamed(images: np.ndarray, labels: np.ndarray, bucket: str, monkeypatch):
    from transferflow.data import records

    monkeypatch.setattr(records, "SHARD_BYTES", 20 * images[0].nbytes)  # 3 shards
    shards, stored = records.write_split([(images, labels)], bucket, "datasets/ids", "train")
    return records.StreamSplit(shards, stored, image_size=4)


@pytest.mark.parametrize("source", ["in memory", "streamed"])
def test_a_run_resumed_mid_epoch_sees_what_an_uninterrupted_run_sees(bucket, monkeypatch, source):
    train, val = id_images(N_TRAIN, 0), id_images(12, 1)
    if source == "streamed":
        train = streamed(*train, bucket, monkeypatch)
    settings = dict(epochs=EPOCHS, learning_rate=0.01, batch_size=BATCH, patience=EPOCHS, seed=7,
                    checkpoint_every_steps=EVERY, logger=logging.getLogger("exact"))

    straight_seen = []
    straight_model = recording_model(straight_seen)
    straight = fit_phase(straight_model, "head", train, val,
                         checkpoint_uri=f"s3://{bucket}/runs/straight/checkpoints/head", **settings)

    uri = f"s3://{bucket}/runs/interrupted/checkpoints/head"
    first_seen = []
    with pytest.raises(Exception, match="preempted"):  # the 14th step: epoch 2, step 6
        fit_phase(recording_model(first_seen, fail_at_step=14), "head", train, val, checkpoint_uri=uri,
                  **settings)
    pointer = storage.get_json(bucket, f"runs/interrupted/checkpoints/head/{POINTER}")[0]
    assert (pointer["epoch"], pointer["step"]) == (1, 4)  # saved at steps 3, 6, 9 and 12 (epoch 2, step 4)

    resumed_seen = []
    resumed_model = recording_model(resumed_seen)  # a new process would build a fresh model
    resumed = fit_phase(resumed_model, "head", train, val, checkpoint_uri=uri, **settings)

    assert len(straight_seen) == EPOCHS * 8
    assert first_seen[:12] + resumed_seen == straight_seen  # the same batches, in the same order
    assert len(resumed_seen) == EPOCHS * 8 - 12  # nothing after the checkpoint is seen twice
    for mine, theirs in zip(resumed_model.get_weights(), straight_model.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, atol=1e-6)  # the same dropout masks, too
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == EPOCHS
    for key, values in straight.history.items():  # epoch 2's loss counts its first 4 steps too
        np.testing.assert_allclose(resumed.history[key], values, rtol=1e-5, err_msg=key)
