"""Training checkpoints in object storage, so a preempted or retried phase resumes.

`S3Checkpoint` is Keras's BackupAndRestore (weights and optimizer state, epoch) with the
backup mirrored to s3://…/runs/<run_id>/checkpoints/<phase>/ after every save, plus what
BackupAndRestore does not keep: the phase's history so far, its seed, and the early-
stopping state (best loss, patience used, best weights). A new attempt with the same run
id finds the pointer `checkpoint.json` (written last, so it always names complete files)
and continues from there instead of starting over.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import keras
import numpy as np

from transferflow import storage

log = logging.getLogger(__name__)

POINTER = "checkpoint.json"


class S3Checkpoint(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backups live in object storage (keeps the newest `keep`)."""

    def __init__(self, uri: str, phase: str, seed: int, save_freq="epoch", keep: int = 2,
                 early_stopping: keras.callbacks.EarlyStopping | None = None, logger=log):
        self._local = tempfile.TemporaryDirectory(prefix="transferflow-ckpt-")
        super().__init__(self._local.name, save_freq=save_freq, delete_checkpoint=False,
                         double_checkpoint=False)
        self.location = storage.parse_s3_uri(uri.rstrip("/"))
        self.phase, self.seed, self.keep, self.logger = phase, seed, max(1, keep), logger
        self.early_stopping = early_stopping  # its state is saved and restored with the weights
        self.history: dict[str, list[float]] = {}  # every finished epoch, restored ones included
        self.resumed_from: int | None = None
        self._saves = 0

    # ---------------------------------------------------------------- restore

    def on_train_begin(self, logs=None):
        state = self._fetch()
        super().on_train_begin(logs)  # loads the fetched weights and optimizer, sets the epoch
        if state is None:
            return
        self.resumed_from = state["epoch"]
        self.history = {k: list(v) for k, v in state["history"].items()}
        self._restore_early_stopping(state)
        keras.utils.set_random_seed(self.seed + state["epoch"])
        self.logger.info("%s: resuming from the checkpoint after epoch %d (step %d) at %s", self.phase,
                         state["epoch"], state["batch"], self.location.uri)

    def _fetch(self) -> dict | None:
        found = storage.get_json(self.location.bucket, f"{self.location.key}/{POINTER}")
        if found is None:
            return None
        state = found[0]
        storage.download_file(self.location.bucket, f"{self.location.key}/{state['weights']}",
                              Path(self._weights_path))
        Path(self._training_metadata_path).write_text(json.dumps({"epoch": state["epoch"],
                                                                 "batch": state["batch"]}))
        return state

    def _restore_early_stopping(self, state: dict) -> None:
        stopper = self.early_stopping
        if stopper is None or state.get("early_stopping") is None:
            return
        saved = state["early_stopping"]
        stopper.wait, stopper.best, stopper.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
        if saved.get("best_weights"):
            path = storage.cached_download(f"s3://{self.location.bucket}/{self.location.key}/"
                                           f"{saved['best_weights']}")
            with np.load(path, allow_pickle=False) as arrays:
                stopper.best_weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]

    # ---------------------------------------------------------------- save

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float, np.floating)):
                self.history.setdefault(key, []).append(float(value))
        super().on_epoch_end(epoch, logs)  # saves, when saving per epoch

    def _save_model(self):
        super()._save_model()
        self._saves += 1
        name = f"{self.phase}-e{self._current_epoch:04d}-s{self._saves:05d}"
        bucket, prefix = self.location.bucket, self.location.key
        storage.upload_file(Path(self._weights_path), bucket, f"{prefix}/{name}.weights.h5")
        state = {"phase": self.phase, "epoch": self._current_epoch, "batch": self._last_batch_seen,
                 "seed": self.seed, "weights": f"{name}.weights.h5", "history": self.history,
                 "early_stopping": self._early_stopping_state(name)}
        storage.put_json(bucket, f"{prefix}/{POINTER}", state)  # last: it names complete files
        self._prune(name)

    def _early_stopping_state(self, name: str) -> dict | None:
        stopper = self.early_stopping
        if stopper is None:
            return None
        state = {"wait": int(stopper.wait), "best": float(stopper.best),
                 "best_epoch": int(stopper.best_epoch), "best_weights": None}
        if stopper.best_weights is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"w{i}": w for i, w in enumerate(stopper.best_weights)})
            state["best_weights"] = f"{name}.best.npz"
            storage.put_bytes(self.location.bucket, f"{self.location.key}/{state['best_weights']}",
                              buffer.getvalue(), "application/octet-stream")
        return state

    def _prune(self, newest: str) -> None:
        """Keep the newest `keep` checkpoints; older files go (the pointer never names them)."""
        prefix = f"{self.location.key}/"
        names = sorted({obj["Key"][len(prefix):].split(".")[0]
                        for obj in storage.list_keys(self.location.bucket, prefix)} - {"checkpoint"})
        for stale in names[:-self.keep]:
            if stale != newest:
                for suffix in (".weights.h5", ".best.npz"):
                    key = f"{prefix}{stale}{suffix}"
                    storage.client().delete_object(Bucket=self.location.bucket, Key=key)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        self._local.cleanup()
