"""The named choices of RetrainConfig's fields, as string enums (the CLI, the UI form and the
metadata all show their values)."""

from enum import StrEnum


class TrainOn(StrEnum):
    """Where the training phases run."""

    AUTO = "auto"  # the gpu pool's train/gpu deployment if it exists, else in-process
    LOCAL = "local"  # in the retrain flow's own process
    GPU_POOL = "gpu-pool"  # always through the train/gpu deployment


class Engine(StrEnum):
    """What decodes images, computes backbone features and trains: this process, or a Ray cluster."""

    LOCAL = "local"
    RAY = "ray"  # the cluster at RAY_ADDRESS, else a local one started on this machine


class PromoteMetric(StrEnum):
    """What the promotion gate compares the new version and production on."""

    ACCURACY = "accuracy"
    MACRO_F1 = "macro_f1"


class Schedule(StrEnum):
    """How the fine-tuning learning rate moves over the phase."""

    CONSTANT = "constant"
    COSINE = "cosine"  # cosine decay from fine_tune_learning_rate to 0
    WARMUP_COSINE = "warmup_cosine"  # linear warm-up over the first epoch, then cosine decay


class ExportFormat(StrEnum):
    """A portable export made at registration, verified against the Keras model on the test split."""

    ONNX = "onnx"  # checked with onnxruntime
    LITERT = "litert"  # .tflite, float32, checked with the LiteRT interpreter
    LITERT_INT8 = "litert_int8"  # .tflite, int8 post-training quantisation (calibrated on train images)
