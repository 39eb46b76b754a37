"""The served version: a registered model loaded from its verified bytes and warmed up, and the
slot that holds the one requests are answered with."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from transferflow.errors import RegistryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedVersion:
    """One registered version, ready to answer: its identity, what its outputs mean, the model."""

    name: str
    version: int
    classes: list[str]
    image_size: int
    sha256: str
    model: Any = field(repr=False)  # keras.Model; typed loosely so this module imports no Keras
    feature_dim: int = 0  # > 0: the model also answers its penultimate features (monitoring.features)

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    def predict(self, pixels: np.ndarray, max_batch: int) -> np.ndarray:
        """Class probabilities for float32 RGB pixels (n, size, size, 3), at most max_batch rows
        per model call. predict_on_batch reuses one compiled function per model (Keras relaxes
        its batch dimension after the second shape), unlike predict(), which builds a data
        pipeline on every call."""
        parts = [self.model.predict_on_batch(pixels[start:start + max_batch])
                 for start in range(0, len(pixels), max_batch)]
        return np.concatenate([np.asarray(part, np.float32) for part in parts])


def load_version(name: str, version: int, features: bool = False) -> ServedVersion:
    """Download a version (size and sha256 checked before Keras reads it), load it in safe mode,
    and warm it up, so the first request it answers does not pay for tracing. With `features`, each
    row it answers is its probabilities followed by its penultimate features (for monitoring)."""
    from transferflow.registry import Registry, verified_download
    from transferflow.training.model import load_classifier

    started = time.monotonic()
    record = Registry().record(name, version)
    if record is None or record.artifact is None:
        raise RegistryError(f"{name}:{version} does not exist (deleted?); see `transferflow models list`")
    if not record.classes or not record.image_size:
        raise RegistryError(f"{name}:{version} has no classes or image_size in its metadata, so its answers "
                            "cannot be labelled; register it with them")
    model = load_classifier(str(verified_download(f"{name}:{version}")))
    dim = 0
    if features:
        from transferflow.monitoring.features import feature_dim, with_features

        model, dim = with_features(model), feature_dim(model)
    served = ServedVersion(name, version, list(record.classes), int(record.image_size),
                           record.artifact.sha256, model, dim)
    warm_up(served)
    log.info("loaded %s (sha256 %s…, %d classes, %d px): verified and warmed up in %.1f s", served.label,
             served.sha256[:12], len(served.classes), served.image_size, time.monotonic() - started)
    return served


def warm_up(served: ServedVersion) -> None:
    """Run batches of one and two black images: Keras traces its predict function for the first
    shape, and for the second one with the batch dimension left open, which every later batch
    size reuses, so live requests never trace. Also checks the outputs against the classes."""
    size = served.image_size
    for rows in (1, 2):
        probabilities = served.predict(np.zeros((rows, size, size, 3), np.float32), max_batch=rows)
        if probabilities.shape != (rows, len(served.classes) + served.feature_dim):
            raise RegistryError(f"{served.label} answers {probabilities.shape[1:]} values per image but its "
                                f"metadata lists {len(served.classes)} classes; register it again")


class ModelSlot:
    """The version requests are answered with. A request reads `current` once and keeps that
    object to the end, so a swap never changes a model under a request that already has one."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current: ServedVersion | None = None
        self.loading: int | None = None  # the version being loaded, while one is

    def swap(self, served: ServedVersion) -> ServedVersion | None:
        """Make `served` the current version (one reference assignment); returns the previous one."""
        with self._lock:
            previous, self.current, self.loading = self.current, served, None
        return previous
