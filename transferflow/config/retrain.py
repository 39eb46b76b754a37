"""RetrainConfig: the one parameter model behind the CLI flags, the flow's
parameters (and so the Prefect UI form) and the metadata saved with a model."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from transferflow.config.choices import Engine, ExportFormat, PromoteMetric, Schedule, TrainOn
from transferflow.config.naming import MODEL_NAME_RE, dataset_slug, default_model_name
from transferflow.training.backbones import BACKBONES, DEFAULT_BACKBONE
from transferflow.training.compute import Strategy

# What the package's face (transferflow/config/__init__.py) re-exports from here.
__all__ = ["Backbone", "Engine", "ExportFormat", "MODEL_NAME_RE", "PromoteMetric", "RetrainConfig",
           "Schedule", "TrainOn", "dataset_slug", "default_model_name", "has_credentials"]

WEIGHT_CHOICES = ("imagenet", "none")

Backbone = Enum("Backbone", {name.upper(): name for name in BACKBONES}, type=str)
Backbone.__doc__ = "keras.applications backbone (include_top=False)."


def _number_or_auto(kind: str, low: float, high: float) -> dict:
    """The JSON schema of a number-or-"auto" field with its range, so that the Prefect UI form
    and the server's parameter check enforce the range as the validator below does."""
    return {"anyOf": [{"type": kind, "minimum": low, "maximum": high}, {"type": "string", "const": "auto"}]}


def has_credentials(uri: str) -> bool:
    """Whether a URI carries user:password@ before its host (which would reach logs and metadata)."""
    return "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]


class RetrainConfig(BaseModel):
    """Everything that decides what a retrain run produces."""

    # allow_inf_nan: "nan" is not a learning rate; hide_input_in_errors: a rejected URL's
    # password must not reach an exception's text.
    model_config = ConfigDict(extra="forbid", use_enum_values=True, validate_default=True,
                              allow_inf_nan=False, hide_input_in_errors=True)

    dataset: str = Field(
        "cifar10",
        description="Dataset: a built-in name (cifar10), an http(s) archive URL, "
        "s3://bucket/prefix/ or a local folder with one subfolder per class "
        "(optionally under train/, val/, test/).",
    )
    backbone: Backbone = Field(DEFAULT_BACKBONE, description="Pretrained backbone to build on.")
    weights: str = Field(
        "imagenet",
        description="Backbone weights: imagenet, none, or the URI of a .weights.h5 file "
        "(local path, file:// or s3://) for air-gapped clusters.",
    )
    image_size: int | Literal["auto"] = Field(
        "auto", json_schema_extra=_number_or_auto("integer", 32, 1024),
        description="Images are resized to this square size (pixels, 32-1024), or auto: the median "
        "image's shorter side rounded to a multiple of 32, between the size at which the backbone's last "
        "block sees a 2x2 map (64 for VGG16: smaller photos are upscaled to it) and its native size "
        "(224 for VGG16). Larger costs quadratically more compute.",
    )
    head_epochs: int = Field(
        50, ge=1, le=1000,
        description="Maximum epochs for the new head: early stopping on val_loss ends it once it has "
        "converged. On cached features an epoch costs a fraction of a second; with augment each "
        "epoch runs the backbone.",
    )
    fine_tune_epochs: int = Field(
        5, ge=0, le=1000,
        description="Maximum fine-tuning epochs; 0 skips fine-tuning.",
    )
    fine_tune_gate: float | Literal["auto"] = Field(
        "auto", json_schema_extra=_number_or_auto("number", 0, 1),
        description="Fine-tune only if the head's validation accuracy is at least this, or auto: "
        "only if it is significantly above the majority-class baseline of the validation split "
        "(one-sided binomial test, p < 0.01), whatever the number of classes.",
    )
    fine_tune_blocks: int | Literal["all"] = Field(
        2,
        description="How many of the backbone's top blocks to unfreeze for fine-tuning (VGG16: 2 is block4 "
        "and block5), or all. BatchNorm layers always stay frozen, in inference mode.",
    )
    fine_tune_schedule: Schedule = Field(
        Schedule.WARMUP_COSINE,
        description="Fine-tuning learning rate: constant, cosine (decay to 0), or warmup_cosine "
        "(linear warm-up over the first epoch, then cosine decay).",
    )
    head_learning_rate: float = Field(1e-3, gt=0.0, le=1.0, description="Adam learning rate for the head.")
    fine_tune_learning_rate: float = Field(
        1e-4, gt=0.0, le=1.0,
        description="Adam learning rate for fine-tuning (the peak of its schedule): a tenth of the "
        "head's, since the head starts converged on standardised features.",
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Images per training step.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout rate before the classifier layer.")
    patience: int = Field(3, ge=1, le=100, description="Early stopping: epochs without val_loss improvement.")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=0.5,
        description="Share of train carved out for validation when the dataset has no val split.",
    )
    test_fraction: float = Field(
        0.1, gt=0.0, lt=0.5,
        description="Share of train carved out for testing when the dataset has no test split.",
    )
    promote_min_accuracy: float | Literal["auto"] = Field(
        "auto", json_schema_extra=_number_or_auto("number", 0, 1),
        description="A new version is blessed only if its test accuracy is at least this, or auto: "
        "only if it is significantly above the majority-class baseline of the test split "
        "(one-sided binomial test, p < 0.01).",
    )
    promote_tolerance: float = Field(
        0.0, ge=0.0, le=1.0,
        description="... and no worse than the production version on the same test images, on "
        "promote_metric, by more than this.",
    )
    promote_metric: PromoteMetric = Field(
        "accuracy",
        description="The metric the new version and production are compared on: accuracy, or "
        "macro_f1 (every class counts the same, whatever its size).",
    )
    max_class_regression: float = Field(
        0.1, ge=0.0, le=1.0,
        description="... and no class's recall (on the same images) drops below production's by more "
        "than this.",
    )
    mcnemar_alpha: float = Field(
        0.05, ge=0.0, le=0.5,
        description="... and a one-sided exact McNemar test on the same images does not find the new "
        "version significantly worse at this level (0 switches the test off).",
    )
    allow_class_change: bool = Field(
        False,
        description="Allow a version whose class set differs from production's to be blessed; the "
        "comparisons with production are then skipped.",
    )
    calibrate: bool = Field(
        True,
        description="Fit temperature scaling on the validation split and fold it into the model, so "
        "that its probabilities match how often it is right (kept only if calibration improves).",
    )
    max_leakage: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Fail before training when more than this share of the test images have an exact "
        "or near duplicate in the training split.",
    )
    export: list[ExportFormat] = Field(
        default_factory=list,
        description="Portable exports registered with the version, each verified on the test split "
        "against the Keras model first: onnx, litert, litert_int8 (comma-separated on the command "
        "line), or none. Each costs a conversion (seconds to a minute).",
    )
    auto_promote: bool = Field(
        True,
        description="Move the production alias to a blessed version; when off, blessed versions are "
        "marked with the candidate alias instead.",
    )
    max_bad_image_fraction: float = Field(
        0.01, ge=0.0, le=0.5,
        description="Corrupt or unreadable images are skipped (and counted in the log) up to this share "
        "of the dataset; above it the run fails and names them.",
    )
    stream_threshold_mb: int = Field(
        2048, ge=0, le=10**7,
        description="Prepared datasets larger than this (decoded, MB) are written as sharded TFRecord and "
        "streamed during training instead of loaded into memory.",
    )
    model_name: str | None = Field(
        None,
        description="Registry name (lowercase letters, digits, . _ -). Default: <dataset>-<backbone>.",
    )
    seed: int = Field(42, ge=0, le=2**31 - 1, description="Seed for splits, shuffling and initialisation.")
    balance_classes: bool = Field(
        False,
        description="Weight the loss by inverse class frequency, for imbalanced datasets.",
    )
    augment: bool = Field(
        False,
        description="Random flip, rotation, zoom and contrast as layers inside the model (they run on "
        "the accelerator, and only in training). Turns feature caching off.",
    )
    mixed_precision: bool = Field(
        True,
        description="Mixed precision where it helps: mixed_bfloat16 on GPUs of compute capability 8.0+, "
        "mixed_float16 on 7.x, float32 on CPUs. The classifier layer and the saved model stay float32.",
    )
    xla: bool = Field(
        True, description="Compile training steps with XLA (jit_compile) where it helps: on GPUs.",
    )
    strategy: Strategy = Field(
        Strategy.AUTO,
        description="auto (mirrored when a worker has several GPUs), none, or mirrored "
        "(tf.distribute.MirroredStrategy). batch_size is per replica: a step sees batch_size x GPUs.",
    )
    cache_features: bool = Field(
        True,
        description="Head phase: run the frozen backbone once and train the head on its features "
        "(the same model, far less compute). Features are kept in object storage, keyed by dataset, "
        "backbone, weights and image size, so a re-run with another head reuses them. false (or "
        "augment) runs the backbone every epoch.",
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, le=10**7,
        description="Training checkpoints go to object storage at epoch ends (see checkpoint_interval_s), "
        "or every this many steps when > 0 (for long epochs); a retried phase resumes from the last one.",
    )
    checkpoint_keep: int = Field(
        2, ge=1, le=100,
        description="Checkpoints kept per phase while training (older ones are deleted); all are "
        "removed once the model is registered.",
    )
    train_on: TrainOn = Field(
        TrainOn.AUTO,
        description="Where training runs: auto (the train/gpu deployment when it exists, else "
        "in-process), local (in-process), gpu-pool (always the train/gpu deployment).",
    )
    engine: Engine = Field(
        Engine.LOCAL,
        description="local, or ray: dataset preparation, backbone features and training run on the Ray "
        "cluster at RAY_ADDRESS (else on a local one started on this machine). Needs pip install "
        "transferflow[ray].",
    )
    num_workers: int = Field(
        2, ge=1, le=10_000,
        description="engine ray: training workers, and the parallelism of the data and feature jobs.",
    )
    gpus_per_worker: float = Field(
        0.0, ge=0.0, le=64.0,
        description="engine ray: GPUs each Ray worker asks for (0: CPU only; a fraction shares a GPU).",
    )
    training_timeout_minutes: int = Field(
        360, ge=1, le=7 * 24 * 60,
        description="A training phase running longer than this is cancelled and the run fails.",
    )
    # Feedback from serving (issue 21): labelled images beside the dataset.
    extra_data: str | None = Field(
        None,
        description="More labelled images to train on beside the dataset, e.g. the captured inputs a person "
        "labelled: s3://bucket/feedback/<name>/labeled/ or a local folder, one subfolder per class (the "
        "dataset's classes). They are fingerprinted with the dataset and split like its images, so some "
        "land in val and test and the new version is judged on them too.",
    )

    @field_validator("extra_data")
    @classmethod
    def _extra_data_form(cls, value: str | None) -> str | None:
        value = (value or "").strip()
        if not value or value.lower() == "none":
            return None  # "" is what a deployment trigger's template gives when there is nothing
        if "://" in value and not value.startswith(("s3://", "file://")):
            raise ValueError(f"extra_data {value!r}: give s3://bucket/prefix/ or a local folder")
        if has_credentials(value):
            raise ValueError("extra_data contains credentials (user:password@): put them in the environment")
        return value
    # Retraining left running: skip when nothing changed (transferflow.retraining.changes).
    if_changed: bool = Field(
        False,
        description="Train only if the dataset or the effective configuration changed since the version at "
        "production (else latest); otherwise the run ends Skipped, before any download or decode. "
        "The scheduled and on-data deployments set it.",
    )
    force: bool = Field(False, description="Train even when if_changed finds nothing changed.")
    init_from: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9._-]*(:[0-9]+|@[a-z0-9._-]+)$",
        description="Warm start: begin from this registered version (NAME@ALIAS or NAME:VERSION): its "
        "fine-tuned backbone and its head, instead of the pretrained weights and a new head. Needs the "
        "same classes, backbone and image size; refused before training otherwise.",
    )
    checkpoint_interval_s: float = Field(
        60.0, ge=0.0, le=86400.0,
        description="A checkpoint is taken at the end of an epoch once this many seconds have passed "
        "since the last one (0: after every epoch), so that sub-second epochs do not each pay for one; "
        "a preempted phase loses at most this plus an epoch. checkpoint_every_steps > 0 counts steps "
        "instead.",
    )

    @field_validator("dataset")
    @classmethod
    def _dataset_not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("dataset is empty: pass a built-in name, URL, s3:// URI or folder")
        return value

    @field_validator("weights")
    @classmethod
    def _weights_form(cls, value: str) -> str:
        value = value.strip()
        if value.lower() in WEIGHT_CHOICES:
            return value.lower()
        if has_credentials(value):
            raise ValueError("weights URI contains credentials (user:password@): put the file in S3 or on "
                             "disk and the credentials in the environment")
        if value.startswith(("http://", "https://")):
            raise ValueError("weights over http(s) are not supported: download the .weights.h5 once, "
                             "upload it, and pass its s3:// URI or a local path")
        if not value.endswith(".h5"):
            raise ValueError(
                f"weights {value!r} is neither 'imagenet', 'none' nor a .weights.h5 file URI"
            )
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size_range(cls, value: int | str) -> int | str:
        if value != "auto" and not 32 <= value <= 1024:
            raise ValueError(f"must be between 32 and 1024 pixels, or auto (got {value})")
        return value

    @field_validator("fine_tune_gate", "promote_min_accuracy")
    @classmethod
    def _share_or_auto(cls, value: float | str, info) -> float | str:
        if value != "auto" and not 0.0 <= value <= 1.0:
            raise ValueError(f"must be an accuracy between 0 and 1, or auto (got {value})")
        return value

    @field_validator("export", mode="before")
    @classmethod
    def _export_list(cls, value):
        """'onnx,litert' (the command line) or 'none' as a list; a repeated format once."""
        if isinstance(value, str):
            value = [] if value.strip().lower() in ("", "none") else value.split(",")
        if not isinstance(value, list | tuple):
            return value  # pydantic names the type it expected
        return list(dict.fromkeys(item.strip() if isinstance(item, str) else item for item in value))

    @field_validator("model_name")
    @classmethod
    def _model_name_safe(cls, value: str | None) -> str | None:
        if value is not None and not MODEL_NAME_RE.match(value):
            raise ValueError(
                f"model_name {value!r} must be 1-63 lowercase letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it becomes part of S3 keys)"
            )
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> RetrainConfig:
        spec = BACKBONES[self.backbone]
        if self.image_size != "auto" and self.image_size < spec.min_size:
            raise ValueError(f"image_size {self.image_size} is below {spec.name}'s minimum {spec.min_size}: "
                             f"set image_size to at least {spec.min_size} or choose another backbone")
        if self.fine_tune_blocks != "all" and not 1 <= self.fine_tune_blocks <= len(spec.blocks):
            raise ValueError(
                f"fine_tune_blocks {self.fine_tune_blocks} must be between 1 and {spec.name}'s "
                f"{len(spec.blocks)} blocks, or 'all'"
            )
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must stay below 0.8 to leave data to train on")
        return self

    @property
    def registry_name(self) -> str:
        """The model's name in the registry: model_name, or <dataset>-<backbone> when unset.

        Derived rather than stored, so a form that changes the dataset gets a matching name.
        """
        return self.model_name or default_model_name(self.dataset, self.backbone)

    @field_validator("dataset")
    @classmethod
    def _no_credentials_in_urls(cls, value: str) -> str:
        if has_credentials(value):
            raise ValueError("dataset URL contains credentials (user:password@): they would end up in "
                             "logs and metadata; copy the data to S3 and pass s3://..., with the "
                             "credentials in the environment")
        return value
