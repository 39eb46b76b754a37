"""A version's reference: the monitoring statistics of its own test and val splits, computed with
the registered model exactly as serving computes them (the same features, projection and
histograms), stored with the version and verified like its other files.

Versions registered before references existed get theirs on demand, from the prepared dataset
their metadata names, and keep it (listed in metadata.json by a conditional write).
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from transferflow import storage
from transferflow.errors import DatasetError, MonitoringError
from transferflow.monitoring.features import split, with_features
from transferflow.monitoring.sketch import (
    REFERENCE_ROWS,
    SCHEMA,
    Sketch,
    from_document,
    projection,
    to_document,
)

log = logging.getLogger(__name__)

REFERENCE_SPLITS = ("test", "val")


def view_splits(model, dataset, batch_size: int = 64) -> dict[str, np.ndarray]:
    """The model's probabilities and penultimate features (`with_features`) on each reference split
    of the dataset, as float32: what the reference is made of, and the test split's answers too."""
    from transferflow.data import load_prepared
    from transferflow.training.fit import split_dataset

    prepared = load_prepared(dataset)
    viewer = with_features(model)
    return {name: np.asarray(viewer.predict(split_dataset(prepared.splits[name], batch_size, False, 0),
                                            verbose=0), np.float32)
            for name in REFERENCE_SPLITS if name in prepared.splits}


def reference_sketch(model, classes: list[str], dataset, batch_size: int = 64,
                     outputs: dict[str, np.ndarray] | None = None) -> Sketch:
    """The statistics of the model's answers on the dataset's test and val splits (`outputs`: those
    answers, from view_splits, when the caller has them already)."""
    outputs = view_splits(model, dataset, batch_size) if outputs is None else outputs
    outputs = [outputs[name] for name in REFERENCE_SPLITS if name in outputs]
    probabilities, features = split(np.concatenate(outputs), len(classes))
    sketch = Sketch(classes, projection(features.shape[1]), capacity=REFERENCE_ROWS)
    for start in range(0, len(probabilities), 256):
        rows = slice(start, start + 256)
        sketch.add(probabilities[rows], features[rows])
    sketch.requests = sketch.images  # one image per "request": the splits were not served
    sketch.formats["prepared"] = sketch.images
    sketch.sizes.clear()
    return sketch


def reference_document(sketch: Sketch, dataset) -> dict:
    return {"kind": "reference", "schema": SCHEMA, "splits": list(REFERENCE_SPLITS),
            "dataset": {"source": dataset.source, "fingerprint": dataset.fingerprint,
                        "prepared_uri": dataset.uri},
            "computed_at": datetime.now(UTC).isoformat(timespec="seconds"), **to_document(sketch)}


def encoded(document: dict) -> bytes:
    return json.dumps(document, sort_keys=True).encode()


def stage_reference(model, classes: list[str], dataset, prefix_uri: str, batch_size: int = 64,
                    logger=log, outputs: dict[str, np.ndarray] | None = None) -> dict:
    """Compute the reference and stage it under prefix_uri; returns its metadata entry
    (file inside the version, sha256, size, staged_uri), for registration to copy and verify."""
    from transferflow.monitoring.layout import reference_file

    sketch = reference_sketch(model, classes, dataset, batch_size, outputs)
    body = encoded(reference_document(sketch, dataset))
    entry = _entry(body, sketch)
    location = storage.parse_s3_uri(f"{prefix_uri}/{entry['file']}")
    storage.put_bytes(location.bucket, location.key, body, "application/json")
    logger.info("monitoring reference: %d test and val images, %d features projected to %d", sketch.images,
                sketch.projection.dim, sketch.projection.out)
    return {**entry, "staged_uri": location.uri, "file": reference_file(entry["sha256"])}


def _entry(body: bytes, sketch: Sketch) -> dict:
    import hashlib

    from transferflow.monitoring.layout import reference_file

    digest = hashlib.sha256(body).hexdigest()
    return {"file": reference_file(digest), "sha256": digest, "size": len(body), "images": sketch.images,
            "splits": list(REFERENCE_SPLITS), "projection": sketch.projection.describe()}


def load_reference(name: str, version: int, compute: bool = True, logger=log) -> Sketch:
    """The version's reference, its bytes checked against metadata.json; computed and stored first
    when the version has none (registered before references existed) and `compute` is on."""
    from transferflow.registry import Registry

    registry = Registry()
    body = registry.reference_bytes(name, version)
    if body is None:
        if not compute:
            raise MonitoringError(f"{name}:{version} has no monitoring reference; run `transferflow monitor "
                                  f"{name}:{version}` once to compute it")
        body = compute_reference(name, version, logger)
    return from_document(json.loads(body))


def compute_reference(name: str, version: int, logger=log) -> bytes:
    """On demand, for a version registered without a reference: its model on its recorded test and
    val splits; then listed in its metadata so that it is computed once."""
    from transferflow.data import ref_for
    from transferflow.registry import Registry
    from transferflow.training import model as modeling

    registry = Registry()
    meta = registry.record(name, version)
    if meta is None:
        raise MonitoringError(f"{name}:{version} does not exist; see `transferflow models list`")
    prepared = meta.dataset.prepared_uri
    if not prepared:
        raise MonitoringError(f"{name}:{version} records no prepared dataset, so no reference can be "
                              "computed")
    try:
        dataset = ref_for(prepared)
    except DatasetError as exc:  # the manifest is gone (deleted with the dataset)
        raise MonitoringError(f"{name}:{version} has no reference, and none can be computed: {exc}") from None
    logger.info("computing the monitoring reference of %s:%d on its test and val splits (once)", name,
                version)
    sketch = reference_sketch(modeling.load_model(f"{name}:{version}"), list(meta.classes), dataset)
    body = encoded(reference_document(sketch, dataset))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference.json"
        path.write_bytes(body)
        registry.add_reference(name, version, path, _entry(body, sketch))
    return body
