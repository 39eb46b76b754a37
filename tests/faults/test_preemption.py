"""Preemption: a phase killed mid-training resumes from its last checkpoint in object storage."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np

from transferflow import storage
from transferflow.checkpoints import POINTER
from transferflow.samples import sample_image
from transferflow.training import fit_phase


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


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


PHASE = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from transferflow import phases
    from transferflow.config import RetrainConfig
    config = RetrainConfig(dataset=sys.argv[1], weights=sys.argv[2], head_epochs=6, patience=6,
                           head_learning_rate=1e-2, batch_size=8, cache_features=False)
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
