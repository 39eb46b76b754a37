"""What a serving window (or a version's reference) remembers of the images it saw: counts, the
predicted-class and confidence histograms, input formats and sizes, and a bounded reservoir of
(confidence, predicted class, projected penultimate features) rows for the two-sample tests.

Memory is bounded whatever the traffic: the histograms have fixed bins and the reservoir a fixed
capacity (a uniform sample of every image seen, Vitter's algorithm R). The features are reduced by
one fixed, seeded Gaussian random projection (scikit-learn's), so that the reference and every
replica project alike; its checksum travels with each sketch, and the monitor compares features
only between sketches whose projections match.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

SCHEMA = 1
PROJECTION_DIM = 32  # enough for MMD to see a shift, small enough for a few hundred rows per window
PROJECTION_SEED = 21  # fixed forever: windows and references written by any release must agree
WINDOW_ROWS = 512  # reservoir rows per window: ~70 KB of JSON
REFERENCE_ROWS = 2000  # the reference keeps every test and val image up to this
CONFIDENCE_BINS = 20
SIZE_EDGES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # the longer side of an input, in pixels


@dataclass(frozen=True)
class Projection:
    """features (n, dim) -> (n, out): a Gaussian random projection, or the identity when the
    features already have no more than PROJECTION_DIM dimensions."""

    dim: int
    matrix: np.ndarray | None  # (dim, out) float32; None: identity

    @property
    def out(self) -> int:
        return self.dim if self.matrix is None else self.matrix.shape[1]

    @functools.cached_property
    def checksum(self) -> str:
        data = b"identity" if self.matrix is None else self.matrix.tobytes()
        return hashlib.sha256(data + str(self.dim).encode()).hexdigest()[:16]

    def apply(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, np.float32)
        return features if self.matrix is None else features @ self.matrix

    def describe(self) -> dict:
        method = "identity" if self.matrix is None else "sklearn GaussianRandomProjection"
        return {"method": method, "seed": PROJECTION_SEED, "dim": self.dim, "out": self.out,
                "sha256": self.checksum}


@functools.lru_cache(maxsize=8)
def projection(dim: int) -> Projection:
    """The projection every sketch of features of this size uses."""
    if dim <= PROJECTION_DIM:
        return Projection(dim, None)
    from sklearn.random_projection import GaussianRandomProjection

    with warnings.catch_warnings():  # fitted on one row: only n_features matters to it
        warnings.simplefilter("ignore")
        fitted = GaussianRandomProjection(PROJECTION_DIM, random_state=PROJECTION_SEED)
        fitted.fit(np.zeros((1, dim)))
    return Projection(dim, np.ascontiguousarray(fitted.components_.T, np.float32))


class Reservoir:
    """A uniform sample of at most `capacity` rows of everything added (algorithm R), seeded."""

    def __init__(self, capacity: int, width: int, seed: int = 0):
        self.capacity, self.seen = capacity, 0
        self.features = np.zeros((capacity, width), np.float32)
        self.confidence = np.zeros(capacity, np.float32)
        self.predicted = np.zeros(capacity, np.int32)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, confidence: np.ndarray, predicted: np.ndarray, features: np.ndarray,
            transform=None) -> None:
        """Rows in order; `transform` (e.g. the projection) is applied only to the rows kept, so
        that once the reservoir is full almost nothing is projected."""
        n = len(confidence)
        fill = max(0, min(n, self.capacity - self.seen))
        rows = np.arange(fill)
        slots = np.arange(self.seen, self.seen + fill)
        if fill < n:  # the k-th row overall (0-based) replaces a random slot with p = capacity / (k + 1)
            ordinal = self.seen + np.arange(fill, n)
            drawn = (self.rng.random(n - fill) * (ordinal + 1)).astype(np.int64)
            kept = np.flatnonzero(drawn < self.capacity)
            rows, slots = np.concatenate([rows, fill + kept]), np.concatenate([slots, drawn[kept]])
        if len(rows):
            # a later row taking a slot overwrites an earlier one: keep each slot's last row
            last = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
            rows, slots = rows[last], slots[last]
            chosen = features[rows] if transform is None else transform(features[rows])
            self.confidence[slots], self.predicted[slots] = confidence[rows], predicted[rows]
            self.features[slots] = chosen
        self.seen += n

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(confidence, predicted, features) of the rows held."""
        n = len(self)
        return self.confidence[:n], self.predicted[:n], self.features[:n]


@dataclass
class Sketch:
    """The statistics of the images one window (or a reference) saw."""

    classes: list[str]
    projection: Projection
    capacity: int = WINDOW_ROWS
    seed: int = 0
    requests: int = 0
    images: int = 0
    errors: int = 0
    dropped: int = 0
    predicted: np.ndarray = None  # (classes,) counts
    confidence: np.ndarray = None  # (CONFIDENCE_BINS,) counts over [0, 1]
    formats: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    reservoir: Reservoir = None

    def __post_init__(self):
        if self.predicted is None:
            self.predicted = np.zeros(len(self.classes), np.int64)
        if self.confidence is None:
            self.confidence = np.zeros(CONFIDENCE_BINS, np.int64)
        if self.reservoir is None:
            self.reservoir = Reservoir(self.capacity, self.projection.out, self.seed)

    def add(self, probabilities: np.ndarray, features: np.ndarray,
            inputs: list[tuple[str, int]] = ()) -> None:
        """One request's images: class probabilities (n, classes), penultimate features (n, dim),
        and (format, longer side) of each input as received."""
        probabilities = np.asarray(probabilities, np.float32)
        predicted = probabilities.argmax(axis=1)
        confidence = probabilities.max(axis=1)
        self.requests += 1
        self.images += len(probabilities)
        self.predicted += np.bincount(predicted, minlength=len(self.classes))[:len(self.classes)]
        self.confidence += np.histogram(confidence, CONFIDENCE_BINS, (0.0, 1.0))[0]
        for kind, side in inputs:
            self.formats[kind] += 1
            self.sizes[size_bucket(side)] += 1
        self.reservoir.add(confidence, predicted, features, self.projection.apply)


def size_bucket(side: int) -> str:
    """'<=64', ..., '>4096': the longer side of an input, in powers of two (a bounded histogram)."""
    edge = next((edge for edge in SIZE_EDGES if side <= edge), None)
    return f"<={edge}" if edge else f">{SIZE_EDGES[-1]}"


def encode(array: np.ndarray) -> dict:
    """A NumPy array as JSON: its dtype, shape and little-endian bytes in base64."""
    array = np.ascontiguousarray(array)
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {"dtype": array.dtype.str.lstrip("<>|="), "shape": list(array.shape),
            "base64": base64.b64encode(little.tobytes()).decode()}


def decode(document: dict) -> np.ndarray:
    dtype = np.dtype(document["dtype"]).newbyteorder("<")
    return np.frombuffer(base64.b64decode(document["base64"]), dtype).reshape(document["shape"]).astype(
        dtype.newbyteorder("="))


def to_document(sketch: Sketch) -> dict:
    """The sketch's statistics as a JSON document (the caller adds who, when and what)."""
    confidence, predicted, features = sketch.reservoir.rows()
    return {
        "classes": sketch.classes, "requests": sketch.requests, "images": sketch.images,
        "errors": sketch.errors, "dropped": sketch.dropped,
        "predicted": dict(zip(sketch.classes, sketch.predicted.tolist(), strict=True)),
        "confidence": {"bins": CONFIDENCE_BINS, "counts": sketch.confidence.tolist()},
        "inputs": {"formats": dict(sketch.formats), "sizes": dict(sketch.sizes)},
        "sample": {"projection": sketch.projection.describe(), "seen": sketch.reservoir.seen,
                   "capacity": sketch.capacity, "confidence": encode(confidence),
                   "predicted": encode(predicted), "features": encode(features)},
    }


@dataclass(frozen=True)
class StoredProjection:
    """A projection as a stored sketch describes it: enough to tell whether two sketches match."""

    dim: int
    out: int
    checksum: str

    def apply(self, features):  # a stored sketch's rows are already projected
        return features


def from_document(document: dict) -> Sketch:
    sample = document["sample"]
    described = sample["projection"]
    stored = StoredProjection(described["dim"], described["out"], described["sha256"])
    features = decode(sample["features"])
    reservoir = Reservoir(max(1, len(features)), stored.out)
    reservoir.features, reservoir.confidence = features, decode(sample["confidence"])
    reservoir.predicted, reservoir.seen = decode(sample["predicted"]), int(sample["seen"])
    reservoir.capacity = max(1, len(features))  # full as stored: nothing more is added to it
    classes = list(document["classes"])
    sketch = Sketch(classes, stored, capacity=int(sample["capacity"]), requests=int(document["requests"]),
                    images=int(document["images"]), errors=int(document.get("errors", 0)),
                    dropped=int(document.get("dropped", 0)),
                    predicted=np.array([document["predicted"].get(c, 0) for c in classes], np.int64),
                    confidence=np.array(document["confidence"]["counts"], np.int64),
                    formats=Counter(document["inputs"]["formats"]),
                    sizes=Counter(document["inputs"]["sizes"]),
                    reservoir=reservoir)
    return sketch


def merge(sketches: list[Sketch], seed: int = 0) -> Sketch:
    """One sketch for several replicas' windows of the same period: counts add up; the reservoir
    is resampled so that each replica's rows weigh as many images as they stand for."""
    first = sketches[0]
    if len(sketches) == 1:
        return first
    merged = Sketch(first.classes, first.projection, capacity=max(s.capacity for s in sketches),
                    requests=sum(s.requests for s in sketches), images=sum(s.images for s in sketches),
                    errors=sum(s.errors for s in sketches), dropped=sum(s.dropped for s in sketches),
                    predicted=sum(s.predicted for s in sketches),
                    confidence=sum(s.confidence for s in sketches),
                    formats=sum((s.formats for s in sketches), Counter()),
                    sizes=sum((s.sizes for s in sketches), Counter()))
    parts = [(s.reservoir.rows(), s.reservoir.seen / max(1, len(s.reservoir)))
             for s in sketches if len(s.reservoir)]
    if not parts:
        return merged
    confidence = np.concatenate([rows[0] for rows, _ in parts])
    predicted = np.concatenate([rows[1] for rows, _ in parts])
    features = np.concatenate([rows[2] for rows, _ in parts])
    weights = np.concatenate([np.full(len(rows[0]), weight) for rows, weight in parts])
    keep = min(merged.capacity, len(confidence))
    chosen = np.sort(np.random.default_rng(seed).choice(len(confidence), keep, replace=False,
                                                         p=weights / weights.sum()))
    reservoir = Reservoir(keep, features.shape[1])
    reservoir.add(confidence[chosen], predicted[chosen], features[chosen])
    reservoir.seen = sum(s.reservoir.seen for s in sketches)
    merged.reservoir = reservoir
    return merged
