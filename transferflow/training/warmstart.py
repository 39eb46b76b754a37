"""Warm start (`--init-from NAME@ALIAS`): begin training from a registered version's fine-tuned
backbone and head instead of the pretrained backbone and a new head.

Checked in two steps, both before any training: the reference, backbone, engine and a fixed
image size before the dataset is touched (`resolve_init_from`, which also pins the reference to a
version number, so an alias that moves during the run changes nothing), and the class set and
the prepared image size once the dataset stage has run (`check_init_classes`).
"""

from __future__ import annotations

import logging

import numpy as np

from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_init_from(config: RetrainConfig, logger=log) -> RetrainConfig:
    """The config with init_from pinned to NAME:VERSION, after the checks that need no data."""
    if not config.init_from:
        return config
    from transferflow.registry import Registry

    registry = Registry()
    name, version = registry.resolve(config.init_from)  # a clear RegistryError when it does not exist
    record = registry.record(name, version)
    source, params = f"{name}:{version}", record.parameters
    if config.engine == "ray":
        raise ConfigError(f"init_from {config.init_from}: warm start runs with engine local only; "
                          "drop --init-from or pass --engine local")
    if params.get("backbone") != config.backbone:
        raise ConfigError(f"init_from {config.init_from} ({source}) was trained on backbone "
                          f"{params.get('backbone')!r}, not {config.backbone!r}: warm start needs the same "
                          "backbone; drop --init-from or pass its backbone")
    if config.image_size != "auto" and record.image_size not in (None, config.image_size):
        raise ConfigError(f"init_from {config.init_from} ({source}) was trained at {record.image_size} px, "
                          f"not {config.image_size}: pass --image-size {record.image_size}, or drop "
                          "--init-from")
    logger.info("warm start from %s (%s): its fine-tuned backbone and head", source, config.init_from)
    return config.model_copy(update={"init_from": source})


def check_init_classes(config: RetrainConfig, classes: list[str], image_size: int) -> None:
    """Before training: the dataset has the version's classes, and was prepared at its size."""
    if not config.init_from:
        return
    from transferflow.registry import Registry

    name, version = Registry().resolve(config.init_from)
    record = Registry().record(name, version)
    added, removed = sorted(set(classes) - set(record.classes)), sorted(set(record.classes) - set(classes))
    if added or removed:
        raise ConfigError(f"init_from {config.init_from} knows classes {record.classes}, the dataset has "
                          f"{classes} (added {added}, removed {removed}): a warm start needs the same class "
                          "set; drop --init-from to train a new head")
    if record.image_size not in (None, image_size):
        raise ConfigError(f"init_from {config.init_from} was trained at {record.image_size} px and "
                          f"image_size auto chose {image_size} px: pass --image-size {record.image_size}")


def warm_start(classifier, reference: str, classes: list[str], logger=log) -> None:
    """Copy the version's backbone, standardisation and head weights into a freshly built
    classifier of the same backbone; the head's columns follow the class names."""
    from transferflow.registry import Registry
    from transferflow.training.model import BACKBONE_LAYER, STANDARDIZE_LAYER, load_model

    registry = Registry()
    known = registry.record(*registry.resolve(reference)).classes
    source = load_model(reference)  # size and sha256 checked first
    for layer in (BACKBONE_LAYER, STANDARDIZE_LAYER):
        classifier.get_layer(layer).set_weights(source.get_layer(layer).get_weights())
    order = [known.index(cls) for cls in classes]
    kernel, bias = source.get_layer("classifier").get_weights()
    classifier.get_layer("classifier").set_weights([kernel[:, order], np.asarray(bias)[order]])
    logger.info("warm start: backbone, standardisation and head weights from %s", reference)
