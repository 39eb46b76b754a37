"""Train/test leakage: test images that are exact or near duplicates of training images.

Duplicates inflate test accuracy, and so the promotions decided on it. Each decoded image gets
three signatures while the dataset is prepared: a digest of its pixels (exact copies, also when
converted losslessly to another format), a DCT perceptual hash of its grey image (re-encodes,
small brightness changes, resizes; shifted or cropped copies only in part), and a colour
thumbnail (8x8 cells of mean RGB). A test image is a near duplicate when a training image's
phash is within NEAR_BITS and their thumbnails agree within COLOUR_LEVELS.

Why colour: the phash sees only grey structure, so aligned images (sprites, documents, product
shots on white, centred crops) with one layout and different colours hash alike: generated
patterns of 4 shapes in random colours were flagged 100% of the time by the phash alone. The
thumbnail costs one more matrix product in the pass that computes the phash, before any training.
Backbone features were the other candidate, but they exist only after the dataset stage, and
with random weights (tests, demos) they say little. The thumbnail's distance takes out the median
offset, so a uniform brightness change does not count; a change of colours does.

Measured by bench/leakage_bench.py (10 seeded 10% carves, 300 copies per change; README, Data):
on the 2,062 hand photos at 32/64 px the phash alone flagged up to 1% of distinct test photos,
with colour none, and >= 97% of JPEG q75/q90 re-encodes, +10/+25 brightness and 80% resizes are
still caught; on the patterns, false positives fall from 100% to <= 1% of a carve.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from transferflow.errors import DatasetError

log = logging.getLogger(__name__)

NEAR_BITS = 2  # phash Hamming distance at or below which a test image is a near duplicate
HASH_SIZE = 8  # 8x8 low DCT frequencies: 64 bits
PHASH_SIDE = 32  # the grayscale image the DCT is taken of
THUMB_SIDE = 8  # colour thumbnails: 8x8 cells of mean RGB (192 bytes an image)
COLOUR_LEVELS = 8.0  # colour_distance at or below which a phash near match is confirmed
PAIR_BATCH = 1 << 16  # phash candidate pairs whose colours are compared at a time
MAX_PAIRS = 2_000_000_000  # test x train comparisons before the near check samples test images
CHUNK_PAIRS = 1 << 22  # comparisons held in memory at a time (32 MiB of uint64)
HASH_PIXELS = 1 << 22  # pixels converted to float at a time (48 MiB as float32 RGB)
EXAMPLES = 10
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601


class LeakageReport(BaseModel):
    """How many test images have a duplicate in the training split, with examples."""

    method: str
    test_images: int
    train_images: int
    exact: int  # test images whose pixels equal a training image's
    near: int  # other test images within near_bits of a training image (in the sample, if sampled)
    share: float  # (exact + near) / test_images; the near rate extrapolated when sampled
    examples: list[list[str]]  # [test name, train name], exact duplicates first
    near_bits: int
    near_sampled: int | None = None  # test images compared for near duplicates, when not all were


def image_hashes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exact, phash) uint64 per image of a uint8 (N, S, S, 3) batch: a blake2b digest of the pixels,
    and the DCT perceptual hash (luma, area-resized to 32x32, 8x8 lowest DCT-II frequencies, each
    bit "above the median of the 63 non-DC ones")."""
    exact, phash, _ = image_signatures(images)
    return exact, phash


def image_signatures(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """image_hashes plus each image's colour thumbnail (uint8 (N, 8, 8, 3), the area-mean colour of
    an 8x8 grid of cells), computed in the same pass over the pixels."""
    exact = np.array([int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "little")
                      for image in images], dtype=np.uint64)
    if not len(images):
        return exact, np.zeros(0, np.uint64), np.zeros((0, THUMB_SIDE, THUMB_SIDE, 3), np.uint8)
    side = images.shape[1]
    basis, area, batch = _phash_basis(side), _area_matrix(side, THUMB_SIDE), max(1, HASH_PIXELS // side**2)
    parts = [_signature(images[start:start + batch], basis, area) for start in range(0, len(images), batch)]
    return exact, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _area_matrix(side: int, out: int) -> np.ndarray:
    """(out, side): each output pixel the mean of the input pixels it covers (an area resize)."""
    edges = np.arange(out + 1) * side / out
    pixels = np.arange(side)
    overlap = (np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)).clip(0)
    return (overlap / (side / out)).astype(np.float32)


def _phash_basis(side: int) -> np.ndarray:
    """(8, side): area resize to 32 then the first 8 orthonormal DCT-II rows, as one matrix, so the
    8x8 coefficients of an image X are M @ X @ M.T (what scipy.fft.dctn(norm="ortho") gives)."""
    k, n = np.arange(HASH_SIZE)[:, None], np.arange(PHASH_SIDE)
    dct = np.sqrt(2 / PHASH_SIDE) * np.cos(np.pi * (2 * n + 1) * k / (2 * PHASH_SIDE))
    dct[0] /= np.sqrt(2)
    return (dct @ _area_matrix(side, PHASH_SIDE)).astype(np.float32)


def _signature(images: np.ndarray, basis: np.ndarray, area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = images.astype(np.float32)
    coefficients = (basis @ (pixels @ LUMA) @ basis.T).reshape(len(images), -1)
    median = np.median(coefficients[:, 1:], axis=1, keepdims=True)
    bits = (coefficients > median).astype(np.uint64)
    phash = (bits << np.arange(HASH_SIZE**2, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
    thumbs = np.einsum("is,nstc,jt->nijc", area, pixels, area, optimize=True)
    return phash, np.round(thumbs).clip(0, 255).astype(np.uint8)


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair of colour thumbnails: the RMS difference in levels (0-255) once the median offset
    is taken out, so a uniform brightness change costs nothing and a change of colours costs a lot."""
    difference = a.reshape(len(a), -1).astype(np.float32) - b.reshape(len(b), -1).astype(np.float32)
    difference -= np.median(difference, axis=1, keepdims=True)
    return np.sqrt((difference**2).mean(axis=1))


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(values)
    return np.unpackbits(values.view(np.uint8).reshape(*values.shape, 8), axis=-1).sum(-1)


@dataclass
class Leaks:
    """Duplicate pairs as (test position, train position) in the hashed order."""

    exact: list[tuple[int, int]]
    near: list[tuple[int, int]]
    candidates: int  # test images without an exact duplicate: those checked for near ones
    sampled: int | None = None  # how many of them were compared, when not all were

    def share(self, test_images: int) -> float:
        """Test images with a duplicate, as a share; the near rate of a sample extrapolated."""
        near = len(self.near) * self.candidates / self.sampled if self.sampled else len(self.near)
        return (len(self.exact) + near) / max(test_images, 1)


def find_leaks(train_exact: np.ndarray, train_phash: np.ndarray, test_exact: np.ndarray,
               test_phash: np.ndarray, near_bits: int = NEAR_BITS, max_pairs: int = MAX_PAIRS,
               chunk_pairs: int = CHUNK_PAIRS, seed: int = 0, train_colour: np.ndarray | None = None,
               test_colour: np.ndarray | None = None, colour_levels: float = COLOUR_LEVELS) -> Leaks:
    """Test images with an exact duplicate in train, and the others within near_bits (phash
    Hamming distance) of one, confirmed by colour when thumbnails are given; above max_pairs
    comparisons a seeded sample of test images is used."""
    hit, exact = _exact_matches(train_exact, test_exact)
    candidates, sampled = np.flatnonzero(~hit), None
    if len(train_phash) and len(candidates) * len(train_phash) > max_pairs:
        sampled = max(1, max_pairs // len(train_phash))
        candidates = np.sort(np.random.default_rng(seed).choice(candidates, sampled, replace=False))
    colours = None if train_colour is None or test_colour is None else (train_colour, test_colour,
                                                                         colour_levels)
    near = _near_matches(train_phash, test_phash, candidates, near_bits, chunk_pairs, colours)
    return Leaks(exact, near, int((~hit).sum()), sampled)


def _exact_matches(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Which test digests occur in train (a boolean per test image), and (test, train) pairs."""
    if not len(train):
        return np.zeros(len(test), bool), []
    order = np.argsort(train, kind="stable")
    found = np.searchsorted(train[order], test).clip(max=len(order) - 1)
    hit = train[order][found] == test
    return hit, [(int(t), int(order[found[t]])) for t in np.flatnonzero(hit)]


def _near_matches(train: np.ndarray, test: np.ndarray, candidates: np.ndarray, near_bits: int,
                  chunk_pairs: int, colours=None) -> list[tuple[int, int]]:
    """(test, nearest train) pairs of the candidate test images within near_bits and, with
    colours, whose colour thumbnails agree; compared a chunk of test images at a time so memory
    stays bounded. The nearest is the closest in bits, then in colour."""
    if not len(train):
        return []
    near, rows = [], max(1, chunk_pairs // len(train))
    for start in range(0, len(candidates), rows):
        chosen = candidates[start:start + rows]
        distances = _popcount(test[chosen, None] ^ train[None, :]).astype(np.float32)
        distances[distances > near_bits] = np.inf
        if colours is not None:
            _confirm_by_colour(distances, chosen, *colours)
        nearest = distances.argmin(axis=1)
        close = np.isfinite(distances[np.arange(len(chosen)), nearest])
        near += [(int(t), int(n)) for t, n in zip(chosen[close], nearest[close], strict=True)]
    return near


def _confirm_by_colour(distances: np.ndarray, chosen: np.ndarray, train_colour: np.ndarray,
                       test_colour: np.ndarray, levels: float) -> None:
    """In place: phash candidates whose colours differ by more than `levels` are dropped (inf);
    confirmed ones get their colour distance as a fraction below 1, to rank ties of bits."""
    rows, columns = np.nonzero(np.isfinite(distances))
    for start in range(0, len(rows), PAIR_BATCH):
        row, column = rows[start:start + PAIR_BATCH], columns[start:start + PAIR_BATCH]
        apart = colour_distance(test_colour[chosen[row]], train_colour[column])
        distances[row, column] = np.where(apart <= levels, distances[row, column] + apart / (levels + 1),
                                          np.inf)


@dataclass
class HashBook:
    """The signatures of every decoded image per split (digest, phash, colour thumbnail), gathered
    while the dataset is written, and how to name an image (names are looked up only for the
    examples a report shows)."""

    exact: dict[str, list[np.ndarray]] = field(default_factory=dict)
    phash: dict[str, list[np.ndarray]] = field(default_factory=dict)
    colour: dict[str, list[np.ndarray]] = field(default_factory=dict)
    positions: dict[str, list[np.ndarray]] = field(default_factory=dict)
    names: dict[str, Callable[[int], str]] = field(default_factory=dict)

    def add(self, split: str, images: np.ndarray, positions: np.ndarray, name: Callable[[int], str]) -> None:
        """Hash a decoded chunk; `positions` are the split positions of its images (bad ones left out)."""
        exact, phash, colour = image_signatures(images)
        for book, value in ((self.exact, exact), (self.phash, phash), (self.colour, colour),
                            (self.positions, np.asarray(positions))):
            book.setdefault(split, []).append(value)
        self.names[split] = name

    def report(self, near_bits: int = NEAR_BITS, colour_levels: float = COLOUR_LEVELS) -> LeakageReport:
        """Train against test."""
        train, test = (self._joined(split) for split in ("train", "test"))
        leaks = find_leaks(train[0], train[1], test[0], test[1], near_bits, train_colour=train[3],
                           test_colour=test[3], colour_levels=colour_levels)
        pairs = [*leaks.exact, *leaks.near][:EXAMPLES]
        return LeakageReport(
            method=f"blake2b of the decoded pixels; 64-bit DCT phash within {near_bits} bits, confirmed by "
                   f"8x8 colour thumbnails within {colour_levels:g} levels",
            test_images=len(test[0]), train_images=len(train[0]), exact=len(leaks.exact),
            near=len(leaks.near), share=leaks.share(len(test[0])),
            examples=[[self.names["test"](int(test[2][t])), self.names["train"](int(train[2][n]))]
                      for t, n in pairs],
            near_bits=near_bits, near_sampled=leaks.sampled)

    def _joined(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        empty_colour = np.zeros((0, THUMB_SIDE, THUMB_SIDE, 3), np.uint8)
        return (np.concatenate(self.exact.get(split) or [np.zeros(0, np.uint64)]).astype(np.uint64),
                np.concatenate(self.phash.get(split) or [np.zeros(0, np.uint64)]).astype(np.uint64),
                np.concatenate(self.positions.get(split) or [np.zeros(0, np.int64)]),
                np.concatenate(self.colour.get(split) or [empty_colour]))


def check_leakage(report: LeakageReport | None, max_share: float, source: str, logger=log) -> None:
    """Fail when more than max_share of the test images duplicate training images; warn below."""
    if report is None:
        logger.info("dataset %s: train/test leakage not checked (prepared before the check existed)", source)
        return
    found = report.exact + report.near
    if not found:
        logger.info("dataset %s: no test image duplicates a training image (%s)", source, report.method)
        return
    shown = ", ".join(f"{test} ~ {train}" for test, train in report.examples[:5])
    sampled = (f" (near duplicates counted on a sample of {report.near_sampled} test images)"
               if report.near_sampled else "")
    counts = (f"{found} of {report.test_images} test images ({report.share:.1%}) duplicate training images: "
              f"{report.exact} exact, {report.near} near{sampled}, e.g. (test ~ train) {shown}")
    if report.share > max_share:
        raise DatasetError(f"dataset {source}: {counts}; above the limit of {max_share:.1%} (max_leakage). "
                           "Duplicates inflate test accuracy: remove them from the test split (or train), "
                           "or raise max_leakage.")
    logger.warning("dataset %s: %s; within max_leakage %.1f%%", source, counts, max_share * 100)
