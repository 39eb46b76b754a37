"""Predict with a registered version: the same decoding and resizing as training, the verified
artifact, top-k labels. `transferflow predict NAME[@alias] IMAGE...` is the command."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferflow import storage
from transferflow.data import IMAGE_SUFFIXES, decode_images
from transferflow.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most likely first

    def as_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


def collect_images(sources: list[str], workdir: Path) -> list[tuple[str, Path]]:
    """(what the user named, local file) for files, folders (recursively) and s3:// objects or
    prefixes; anything that is not an image is an error naming it."""
    found = []
    for source in sources:
        if source.startswith("s3://"):
            found += _s3_images(source, workdir)
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            found += [(str(p), p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            found.append((source, path))
        else:
            raise DatasetError(f"image {source} does not exist: pass image files, folders or s3:// URIs")
    if not found:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(sources)}")
    return found


def _s3_images(uri: str, workdir: Path) -> list[tuple[str, Path]]:
    location = storage.parse_s3_uri(uri)
    if location.key.lower().endswith(IMAGE_SUFFIXES):
        target = workdir / Path(location.key).name
        return [(uri, storage.download_file(location.bucket, location.key, target))]
    found = []
    for obj in storage.list_keys(location.bucket, location.key):
        if obj["Key"].lower().endswith(IMAGE_SUFFIXES):
            target = workdir / obj["Key"].replace("/", "_")
            found.append((f"s3://{location.bucket}/{obj['Key']}",
                          storage.download_file(location.bucket, obj["Key"], target)))
    return found


def predict(reference: str, sources: list[str], top_k: int = 3) -> tuple[str, list[Prediction]]:
    """Top-k predictions of a registered version (verified bytes) for the given images."""
    from transferflow.registry import Registry
    from transferflow.training.model import load_model

    registry = Registry()
    name, version = registry.resolve(reference)
    meta = registry.record(name, version)
    model = load_model(f"{name}:{version}")
    with tempfile.TemporaryDirectory() as tmp:
        images = collect_images(sources, Path(tmp))
        decoded = decode_images([path for _, path in images], meta.image_size)
    if decoded.bad:
        raise DatasetError("cannot decode " + ", ".join(images[i][0] for i in decoded.bad))
    probabilities = model.predict(decoded.images.astype(np.float32), verbose=0)
    return f"{name}:{version}", [_top(shown, row, meta.classes, top_k)
                                 for (shown, _), row in zip(images, probabilities, strict=True)]


def _top(shown: str, row: np.ndarray, classes: list[str], k: int) -> Prediction:
    order = np.argsort(row)[::-1][:k]
    return Prediction(shown, [(classes[i], float(row[i])) for i in order])
