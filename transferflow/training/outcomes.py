"""What a training phase hands on, and where its files go: the staged model's outcome (PhaseOutcome,
...), the run's prefix in object storage, and the outcome file a parent run on another worker reads.
Shared by the local phases (training.local) and the Ray ones (scaleout/)."""

from __future__ import annotations

import os
import socket

from pydantic import BaseModel

from transferflow import storage
from transferflow.training.gate import GateDecision


class BackboneRef(BaseModel):
    """A backbone whose weights were found and checked to fit."""

    name: str
    weights: str  # imagenet | none | the URI given
    weights_sha256: str | None
    image_size: int
    parameters: int
    preprocessing: str  # keras.applications.<module>.preprocess_input


class PhaseOutcome(BaseModel):
    """A trained model staged in object storage, and how it did."""

    phase: str
    model_uri: str
    sha256: str
    size: int
    metrics: dict
    ran_on: dict = {}  # host, visible accelerators, CUDA_VISIBLE_DEVICES


class FineTuneOutcome(BaseModel):
    tuned: PhaseOutcome
    kept: GateDecision
    chosen: PhaseOutcome  # the tuned model if kept, else the head


def run_prefix(run_id: str, bucket: str | None = None) -> str:
    """Where a run stages its intermediate models: s3://<bucket>/runs/<run_id>."""
    return f"s3://{bucket or storage.bucket_name()}/runs/{run_id}"


def checkpoint_prefix(run_id: str, phase: str) -> str:
    """Where a phase's checkpoints go: under the run's prefix, removed after registration."""
    return f"{run_prefix(run_id)}/checkpoints/{phase}"


def runtime_info() -> dict:
    """Where this process trains: recorded so a user can tell a GPU run from a CPU one."""
    import keras

    devices = []
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        devices = [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
    return {"host": socket.gethostname(), "backend": keras.backend.backend(),
            "accelerators": devices, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def outcome_key(run_id: str, phase: str) -> str:
    return f"{run_prefix(run_id)}/{phase}.outcome.json"


def store_outcome(run_id: str, phase: str, outcome: BaseModel) -> str:
    """Write a training phase's outcome next to its model, for a parent run on another worker."""
    location = storage.parse_s3_uri(outcome_key(run_id, phase))
    storage.put_json(location.bucket, location.key, outcome.model_dump(mode="json"))
    return location.uri


def load_outcome(run_id: str, phase: str, model: type[BaseModel]) -> BaseModel:
    location = storage.parse_s3_uri(outcome_key(run_id, phase))
    found = storage.get_json(location.bucket, location.key)
    if found is None:
        from transferflow.errors import TrainingError

        raise TrainingError(f"the {phase} training run finished without writing {location.uri}")
    return model.model_validate(found[0])
