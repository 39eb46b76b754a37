"""Training checkpoints in object storage, so a preempted or retried phase resumes exactly.

`S3Checkpoint` saves, at the end of an epoch once `interval_s` seconds have passed since its last
save (every epoch with 0), or every N steps, to s3://…/runs/<run_id>/checkpoints/<phase>/:
the weights and optimizer state, the random state of the layers (dropout, augmentation), the
running training metrics, the phase's history so far and the early-stopping state (best loss,
patience used, best weights). The pointer `checkpoint.json` is written last, so it always names
complete files; it says where training stood: `epoch` whole epochs and `step` batches of the next.
What a checkpoint holds is read from the model at once; its upload runs in the background while
training goes on, one at a time (the next save, and the end of training, wait for it).

A new attempt with the same run id continues from there and sees what an uninterrupted run would
have seen: an epoch's order depends only on (seed, epoch) (`training.train_batches`), so the
interrupted epoch is rebuilt and its first `step` batches are skipped. Keras's BackupAndRestore
cannot do this: it saves the batch but restarts the epoch from its first batch on resume.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np

from transferflow import localcache, storage

log = logging.getLogger(__name__)

POINTER = "checkpoint.json"


class ResumePoint(NamedTuple):
    """Where training stands: after `epoch` whole epochs and `step` batches of the next."""

    epoch: int = 0
    step: int = 0


class EndResumedEpoch(keras.callbacks.Callback):
    """Ends the first epoch of a run resumed mid-epoch after the batches it had left.

    Keras runs every epoch steps_per_epoch long and has no initial step. This stops the batch
    loop after `remaining` batches, and clears the stop at the epoch's end, before any other
    callback (EarlyStopping) decides whether training ends: it must come first in the list.
    """

    def __init__(self, remaining: int):
        super().__init__()
        self.remaining, self._stopped = remaining, False

    def on_train_batch_end(self, batch, logs=None):
        if self.remaining and batch + 1 == self.remaining and not self.model.stop_training:
            self.model.stop_training = self._stopped = True

    def on_epoch_end(self, epoch, logs=None):
        self.remaining = 0
        if self._stopped:
            self.model.stop_training = self._stopped = False


class S3Checkpoint(keras.callbacks.Callback):
    """Checkpoints in object storage at an epoch's end once `interval_s` seconds have passed since
    the last one (every epoch with 0), or every `every_steps` steps when that is set (keeps the newest
    `keep`); a new attempt resumes from the newest at the very step it was taken.

    `background` (default): a save's upload overlaps the training that follows it.
    `scratch`: for a worker other than the chief of a multi-worker strategy. It resumes from the
    chief's checkpoints like the chief, and runs every save like the chief (reading some variables
    is a collective operation that all workers must join), but writes to a local scratch folder
    that is discarded: the chief's checkpoint in object storage is the only one.
    """

    def __init__(self, uri: str, phase: str, seed: int, steps_per_epoch: int, every_steps: int = 0,
                 keep: int = 2, early_stopping: keras.callbacks.EarlyStopping | None = None, logger=log,
                 scratch: bool = False, interval_s: float = 0.0, background: bool = True):
        super().__init__()
        self._local = tempfile.TemporaryDirectory(prefix="transferflow-ckpt-")
        self.scratch = scratch
        self.location = storage.parse_s3_uri(uri.rstrip("/"))
        self.phase, self.seed, self.steps_per_epoch = phase, seed, steps_per_epoch
        self.every_steps, self.keep, self.logger = every_steps, max(1, keep), logger
        self.early_stopping = early_stopping  # its state is saved and restored with the weights
        self.history: dict[str, list[float]] = {}  # every finished epoch, restored ones included
        self.resumed_from: int | None = None
        self._pointer: dict | None = None
        self._start: ResumePoint | None = None
        self._position = ResumePoint()
        self._unsaved = 0  # steps since the last save
        self.interval_s, self._saved_at = interval_s, time.monotonic()
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"checkpoint-{phase}")
        self._upload: Future | None = None
        self.background = background  # off: each save is uploaded before training goes on
        self.saves = 0
        self._saved_metrics: list[np.ndarray] | None = None  # added after the first resumed batch

    # ---------------------------------------------------------------- restore

    def resume_point(self) -> ResumePoint:
        """Where the newest checkpoint left off ((0, 0) without one). Read before fit(), so that
        the input pipeline can start there."""
        if self._start is None:
            found = storage.get_json(self.location.bucket, f"{self.location.key}/{POINTER}")
            self._pointer = found[0] if found else None
            self._start = self._resumable(self._pointer) if self._pointer else ResumePoint()
        return self._start

    def _resumable(self, state: dict) -> ResumePoint:
        step = state.get("step", 0)
        if step and state.get("steps_per_epoch") != self.steps_per_epoch:
            self.logger.warning("%s: the checkpoint at %s was taken at %s steps an epoch and this run "
                                "has %d (another batch size?): its epoch %d starts again from its first "
                                "batch", self.phase, self.location.uri, state.get("steps_per_epoch"),
                                self.steps_per_epoch, state["epoch"] + 1)
            step = 0
        return ResumePoint(state["epoch"], step)

    def on_train_begin(self, logs=None):
        self._saved_at = time.monotonic()
        start = self.resume_point()
        self._position, state = start, self._pointer
        if state is None:
            return
        self._restore_model(state, mid_epoch=start.step > 0)
        self.resumed_from = state["epoch"]
        self.history = {k: list(v) for k, v in state["history"].items()}
        self._restore_early_stopping(state)
        within = f" and {start.step} steps of epoch {start.epoch + 1}" if start.step else ""
        self.logger.info("%s: resuming from the checkpoint after epoch %d%s at %s", self.phase,
                         state["epoch"], within, self.location.uri)

    def _restore_model(self, state: dict, mid_epoch: bool) -> None:
        path = Path(self._local.name) / "restore.weights.h5"
        storage.download_file(self.location.bucket, f"{self.location.key}/{state['weights']}", path)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)  # so its state can load
        self.model.load_weights(path)
        if not state.get("state"):  # a checkpoint from before random state was kept
            return
        with np.load(self._download(state["state"]), allow_pickle=False) as arrays:
            saved = {name: [arrays[f"{name}{i}"] for i in range(int(arrays[f"{name}_count"]))]
                     for name in ("random", "metrics")}
        self._assign(random_state(self.model), saved["random"], "random state")
        self._saved_metrics = saved["metrics"] if mid_epoch and saved["metrics"] else None

    def _assign(self, variables: list, values: list[np.ndarray], what: str) -> None:
        if len(variables) != len(values):
            self.logger.warning("%s: the checkpoint's %s does not fit this model (%d values for %d "
                                "variables); it is not restored", self.phase, what, len(values),
                                len(variables))
            return
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    def _download(self, name: str) -> Path:
        return localcache.cached_download(f"s3://{self.location.bucket}/{self.location.key}/{name}")

    def _restore_early_stopping(self, state: dict) -> None:
        stopper = self.early_stopping
        if stopper is None or state.get("early_stopping") is None:
            return
        saved = state["early_stopping"]
        stopper.wait, stopper.best, stopper.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
        if saved.get("best_weights"):
            with np.load(self._download(saved["best_weights"]), allow_pickle=False) as arrays:
                stopper.best_weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]

    # ---------------------------------------------------------------- save

    def on_train_batch_end(self, batch, logs=None):
        self._position = ResumePoint(self._position.epoch, self._position.step + 1)
        if self._saved_metrics is not None:  # the resumed epoch's metrics count its earlier batches
            self._add_saved_metrics()
        self._unsaved += 1
        # a save due on an epoch's last batch waits for the epoch's end, after validation
        if self.every_steps and self._unsaved >= self.every_steps \
                and self._position.step < self.steps_per_epoch:
            self._save_model()

    def _add_saved_metrics(self) -> None:
        """Loss and accuracy are means, kept as totals and counts: the saved ones add up."""
        variables, saved = self.model.metrics_variables, self._saved_metrics
        if len(variables) == len(saved):
            saved = [v.numpy() + earlier for v, earlier in zip(variables, saved, strict=True)]
        self._assign(variables, saved, "metrics")  # warns, and keeps this run's own, on a mismatch
        self._saved_metrics = None

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float, np.floating)):
                self.history.setdefault(key, []).append(float(value))
        self._position = ResumePoint(epoch + 1, 0)
        due = (self._unsaved >= self.every_steps if self.every_steps
               else time.monotonic() - self._saved_at >= self.interval_s)
        if due:
            self._save_model()

    def _save_model(self) -> None:
        """Read the checkpoint from the model now; upload it in the background, pointer last."""
        self._wait()  # one upload at a time: the previous one is complete before this one starts
        epoch, step = self._position
        name = f"{self.phase}-e{epoch:04d}-s{step:06d}"  # sorts in training order, across attempts
        weights = Path(self._local.name) / "latest.weights.h5"
        self.model.save_weights(weights, overwrite=True)
        files = {f"{name}.state.npz": self._state_arrays(mid_epoch=step > 0)}
        state = {"phase": self.phase, "epoch": epoch, "step": step, "steps_per_epoch": self.steps_per_epoch,
                 "seed": self.seed, "weights": f"{name}.weights.h5", "state": f"{name}.state.npz",
                 "history": {k: list(v) for k, v in self.history.items()},
                 "early_stopping": self._early_stopping_state(name, files)}
        self._unsaved, self._saved_at, self.saves = 0, time.monotonic(), self.saves + 1
        if self.scratch:  # a scratch worker has saved its weights, locally: that is all it writes
            for file, data in files.items():
                (Path(self._local.name) / f"scratch.{file.split('.', 1)[1]}").write_bytes(data)
            return
        self._upload = self._uploads.submit(self._write_checkpoint, name, weights, files, state)
        if not self.background:
            self._wait()

    def _write_checkpoint(self, name: str, weights: Path, files: dict[str, bytes], state: dict) -> None:
        bucket, prefix = self.location.bucket, self.location.key
        storage.upload_file(weights, bucket, f"{prefix}/{name}.weights.h5")
        for file, data in files.items():
            storage.put_bytes(bucket, f"{prefix}/{file}", data, "application/octet-stream")
        storage.put_json(bucket, f"{prefix}/{POINTER}", state)  # last: it names complete files
        self._prune(name)

    def _wait(self) -> None:
        """Wait for the checkpoint being uploaded; its failure is this phase's failure."""
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.result()

    def _state_arrays(self, mid_epoch: bool) -> bytes:
        """The layers' random state, and mid-epoch the running metrics, as one .npz."""
        groups = {"random": random_state(self.model),
                  "metrics": self.model.metrics_variables if mid_epoch else []}
        arrays = {}
        for name, variables in groups.items():
            arrays[f"{name}_count"] = np.array(len(variables))
            arrays.update({f"{name}{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def _early_stopping_state(self, name: str, files: dict[str, bytes]) -> dict | None:
        """EarlyStopping's state; its best weights join `files`."""
        stopper = self.early_stopping
        if stopper is None:
            return None
        best = None if stopper.best is None else float(stopper.best)  # None before the first epoch ends
        state = {"wait": int(stopper.wait), "best": best,
                 "best_epoch": int(stopper.best_epoch), "best_weights": None}
        if stopper.best_weights is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"w{i}": w for i, w in enumerate(stopper.best_weights)})
            state["best_weights"] = f"{name}.best.npz"
            files[state["best_weights"]] = buffer.getvalue()
        return state

    def _prune(self, newest: str) -> None:
        """Keep the newest `keep` checkpoints; older files go (the pointer never names them)."""
        prefix = f"{self.location.key}/"
        names = sorted({obj["Key"][len(prefix):].split(".")[0]
                        for obj in storage.list_keys(self.location.bucket, prefix)} - {"checkpoint"})
        for stale in names[:-self.keep]:
            if stale != newest:
                for suffix in (".weights.h5", ".state.npz", ".best.npz"):
                    key = f"{prefix}{stale}{suffix}"
                    storage.client().delete_object(Bucket=self.location.bucket, Key=key)

    def on_train_end(self, logs=None):
        try:
            self._wait()
        finally:
            self._uploads.shutdown(wait=True)
            self._local.cleanup()

    def after_failure(self) -> None:
        """Training raised (Keras then calls no on_train_end): let the upload in flight finish, so
        the newest checkpoint taken is the one a retry resumes from, and free the local folder.
        An upload failure is logged, not raised: the training's own error is the one to report."""
        try:
            self._wait()
        except Exception as exc:  # noqa: BLE001 (the phase is failing already; say why this one is lost)
            self.logger.warning("%s: the last checkpoint's upload failed too (%s): a retry resumes from "
                                "the one before", self.phase, exc)
        finally:
            self._uploads.shutdown(wait=True)
            self._local.cleanup()


def random_state(model: keras.Model) -> list:
    """The state of the model's random generators (dropout, augmentation): not in its weights
    file, and without it a resumed run would draw other dropout masks than an uninterrupted one."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]
