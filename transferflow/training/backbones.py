"""The keras.applications backbones transferflow can build, and their weights.

Each backbone is one `BackboneSpec` entry. Keras is imported lazily so that this
module (and the config that names backbones) stays cheap to import.
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferflow.errors import WeightsError

log = logging.getLogger(__name__)

# image_size "auto" upscales photos so small that the backbone's last block would see less than a
# MIN_FINAL_MAP x MIN_FINAL_MAP map: at 1x1 (32 px photos through a stride-32 backbone) every
# feature of that block sees one window of the photo, at the scale ImageNet objects have in 224 px
# images only for objects that fill it. On real 32 px photos (sign digits, VGG16) 32 px gave 91.4%,
# 64 px (2x2) 95.2%, 96 px (3x3) 96.2%, for 2x and 4x the compute: N^2 (README, "Image size").
MIN_FINAL_MAP = 2


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
    # The input size its ImageNet weights were trained at: image_size "auto" never goes above it,
    # since larger inputs cost quadratically more and the filters were not trained at that scale.
    native_size: int = 224
    # Input pixels per pixel of the last block's output map, along each side.
    total_stride: int = 32

    def auto_bounds(self) -> tuple[int, int]:
        """image_size "auto"'s range: from the size at which the last block sees a MIN_FINAL_MAP x
        MIN_FINAL_MAP map (or the backbone's minimum, if larger) to the native size."""
        return max(self.min_size, MIN_FINAL_MAP * self.total_stride), self.native_size

    def preprocess_input(self):
        module = importlib.import_module(f"keras.applications.{self.preprocess_module}")
        return module.preprocess_input


def _numbered(template: str, first: int, last: int) -> tuple[str, ...]:
    return tuple(template.format(i) for i in range(first, last + 1))


def _efficientnet(name: str, constructor: str, preprocess_module: str, stages: int,
                  native_size: int = 224) -> BackboneSpec:
    # Layers are named block{stage}{letter}_..., with at most 7 stages: "block1" matches stage 1 only.
    return BackboneSpec(name, constructor, preprocess_module, 32,
                        ("stem_", *_numbered("block{}", 1, stages), "top_"), native_size)


def _convnext(name: str, constructor: str) -> BackboneSpec:
    # Keras's default model name (the same as ours) prefixes every layer. Each stage's downsampling
    # layer is its own block, below the stage. The final, unnamed LayerNormalization is in no block:
    # the pooling and Dense head above it can absorb its per-channel scale and shift.
    blocks = [f"{name}_stem"]
    for stage in range(4):
        if stage:
            blocks.append(f"{name}_downsampling_block_{stage - 1}")
        blocks.append(f"{name}_stage_{stage}_")
    return BackboneSpec(name, constructor, "convnext", 32, tuple(blocks))


# Prefixes are disjoint: no layer name starts with two of them. Layers Keras names automatically
# (activations, Xception's shortcut convolutions, ...) are in no block. MobileNetV3's stem ("conv")
# and first block ("expanded_conv_") cannot be told apart from its top ("conv_1") and later blocks
# ("expanded_conv_1_") by a prefix, so its blocks start at expanded_conv_1_.
# MobileNetV3, EfficientNet(V2) and ConvNeXt rescale inside the model: their preprocess_input is a
# pass-through. min_size is what Keras enforces (it rejects one pixel less), at least 32.
BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("vgg16", "VGG16", "vgg16", 32, _numbered("block{}_", 1, 5)),
        BackboneSpec("vgg19", "VGG19", "vgg19", 32, _numbered("block{}_", 1, 5)),
        BackboneSpec("resnet50", "ResNet50", "resnet", 32, _numbered("conv{}_", 1, 5)),
        BackboneSpec("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 32,
                     ("Conv1", "expanded_conv_", *_numbered("block_{}_", 1, 16), "Conv_1")),
        BackboneSpec("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 32,
                     (*_numbered("expanded_conv_{}_", 1, 10), "conv_1")),
        BackboneSpec("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 32,
                     (*_numbered("expanded_conv_{}_", 1, 14), "conv_1")),
        _efficientnet("efficientnet_b0", "EfficientNetB0", "efficientnet", 7),
        _efficientnet("efficientnet_b1", "EfficientNetB1", "efficientnet", 7, 240),
        _efficientnet("efficientnet_b2", "EfficientNetB2", "efficientnet", 7, 260),
        _efficientnet("efficientnet_b3", "EfficientNetB3", "efficientnet", 7, 300),
        _efficientnet("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnet_v2", 6),
        BackboneSpec("xception", "Xception", "xception", 71, _numbered("block{}_", 1, 14), 299),
        _convnext("convnext_tiny", "ConvNeXtTiny"),
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
    damage = damaged_weights(path)
    if damage:  # else Keras's error would be reported as an architecture mismatch
        raise WeightsError(f"weights file {path.name} is damaged: {damage}. {DAMAGED_FIX}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
        # Keras only warns when parts of the file match nothing: a partial load is still a mismatch.
        skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)
                   or "freshly-initialized" in str(w.message)]
        if skipped:
            raise ValueError(skipped[0])
        _match_imagenet_scaling(model, spec)
    except Exception as exc:  # Keras raises ValueError, OSError or KeyError on a mismatch
        raise WeightsError(
            f"weights file {path.name} does not fit backbone {spec.name} "
            f"(include_top=False): {_first_line(exc)}. Save the weights from "
            f"keras.applications.{spec.constructor}(include_top=False) with "
            "model.save_weights('name.weights.h5'), or choose the matching --backbone."
        ) from exc


DAMAGED_FIX = ("Download or save it again (model.save_weights('name.weights.h5')), and upload it again "
               "if it came from s3://")


def damaged_weights(path: Path) -> str | None:
    """Why HDF5 cannot open the file (cut short, not HDF5 at all), or None when it opens.

    h5py comes with TensorFlow and imports neither it nor Keras, so this runs before either loads.
    """
    import h5py

    try:
        with h5py.File(path, "r"):
            return None
    except OSError as exc:
        text = str(exc)
    sizes = re.search(r"\beof = (\d+).*stored_eof = (\d+)", text)
    if sizes:
        return (f"it is truncated ({int(sizes[1]):,} bytes of the {int(sizes[2]):,} its header "
                "records; an interrupted download or copy?)")
    if "signature not found" in text:
        return "it is not an HDF5 file (.weights.h5 files are HDF5)"
    return f"HDF5 cannot open it ({text.strip()[:200]})"


IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def _match_imagenet_scaling(model, spec: BackboneSpec) -> None:
    """EfficientNet B0-B7 built with weights="imagenet" divide the normalised input once more by
    sqrt(std), in a weightless Rescaling layer that a weights=None build leaves out. A file saved
    from the ImageNet model carries its statistics (variance = std**2): fold the missing division
    into the variance, so the file gives the same features as Keras's own ImageNet model."""
    import keras
    import numpy as np

    if not spec.constructor.startswith("EfficientNetB"):
        return
    layer = next(x for x in model.layers if isinstance(x, keras.layers.Normalization))
    mean, variance, count = layer.get_weights()
    std = np.asarray(IMAGENET_STD_RGB, dtype=variance.dtype)
    if np.allclose(variance, std**2, rtol=1e-3):
        layer.set_weights([mean, variance * std, count])
        layer.finalize_state()
        log.info("%s: ImageNet normalisation found in the weights file; applied Keras's extra "
                 "1/sqrt(std) input scaling", spec.name)


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
        from transferflow import localcache
        from transferflow.errors import StorageError

        try:
            return localcache.cached_download(weights)
        except StorageError as exc:
            raise WeightsError(f"cannot fetch weights {weights}: {exc}") from None
    path = Path(weights.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {weights} does not exist: pass imagenet, none, or the "
                           "path or s3:// URI of a .weights.h5 file")
    return path
