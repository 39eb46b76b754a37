"""The keras.applications backbones transferflow can build, and their weights.

Each backbone is one `BackboneSpec` entry. Keras is imported lazily so that this
module (and the config that names backbones) stays cheap to import.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferflow.errors import WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one keras.applications backbone and fine-tune its top."""

    name: str
    constructor: str  # attribute of keras.applications
    preprocess_module: str  # keras.applications.<module>.preprocess_input
    min_size: int
    # Layer-name prefixes of the backbone's blocks, bottom to top. Fine-tuning
    # unfreezes the last N of these.
    blocks: tuple[str, ...]

    def preprocess_input(self):
        module = importlib.import_module(f"keras.applications.{self.preprocess_module}")
        return module.preprocess_input


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("vgg16", "VGG16", "vgg16", 32, tuple(f"block{i}_" for i in range(1, 6))),
        BackboneSpec("vgg19", "VGG19", "vgg19", 32, tuple(f"block{i}_" for i in range(1, 6))),
        BackboneSpec("resnet50", "ResNet50", "resnet", 32, tuple(f"conv{i}_" for i in range(1, 6))),
        BackboneSpec(
            "mobilenet_v2",
            "MobileNetV2",
            "mobilenet_v2",
            32,
            ("Conv1", *(f"block_{i}_" for i in range(1, 17)), "Conv_1"),
        ),
        BackboneSpec(
            "efficientnet_b0",
            "EfficientNetB0",
            "efficientnet",
            32,
            ("stem_", *(f"block{i}" for i in range(1, 8)), "top_"),
        ),
    )
}

DEFAULT_BACKBONE = "vgg16"


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise WeightsError(f"unknown backbone {name!r}: choose one of {known}") from None


def construct(spec: BackboneSpec, image_size: int, weights_file: Path | str | None) -> Any:
    """Build the headless backbone; `weights_file` is 'imagenet', None, or a local .h5 path."""
    import keras

    builder = getattr(keras.applications, spec.constructor)
    shape = (image_size, image_size, 3)
    if weights_file == "imagenet":
        return _imagenet_backbone(builder, spec, shape)
    model = builder(include_top=False, weights=None, input_shape=shape)
    if weights_file is not None:
        _load_weights_into(model, spec, Path(weights_file))
    return model


def _imagenet_backbone(builder, spec: BackboneSpec, shape) -> Any:
    try:
        return builder(include_top=False, weights="imagenet", input_shape=shape)
    except Exception as exc:  # Keras raises plain Exception types for download failures
        raise WeightsError(
            f"could not get ImageNet weights for {spec.name}: {exc}. Without internet, "
            "save them once elsewhere (model.save_weights('x.weights.h5')), upload them, and "
            "pass --weights s3://bucket/x.weights.h5 (or a local path)."
        ) from exc


def _load_weights_into(model, spec: BackboneSpec, path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: pass an existing .weights.h5 file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
        # Keras only warns when parts of the file match nothing: a partial load is still a mismatch.
        skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)
                   or "freshly-initialized" in str(w.message)]
        if skipped:
            raise ValueError(skipped[0])
    except Exception as exc:  # Keras raises ValueError, OSError or KeyError on a mismatch
        raise WeightsError(
            f"weights file {path.name} does not fit backbone {spec.name} "
            f"(include_top=False): {_first_line(exc)}. Save the weights from "
            f"keras.applications.{spec.constructor}(include_top=False) with "
            "model.save_weights('name.weights.h5'), or choose the matching --backbone."
        ) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def resolve_weights(weights: str) -> str | Path | None:
    """'imagenet' stays as is, 'none' becomes None, a URI becomes a local file path."""
    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return None
    if weights.startswith("s3://"):
        from transferflow import storage
        from transferflow.errors import StorageError

        try:
            return storage.cached_download(weights)
        except StorageError as exc:
            raise WeightsError(f"cannot fetch weights {weights}: {exc}") from None
    path = Path(weights.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {weights} does not exist: pass imagenet, none, or the "
                           "path or s3:// URI of a .weights.h5 file")
    return path
