"""Splitting labelled images into train, val and test, and counting them per class.

A carved image's split is a function of its own content, the seed and the fractions (TFX
ExampleGen's hash split): a keyed hash of its content digest gives it a uniform draw u in [0, 1),
and fixed bands of u decide (test [0, t), val [t, t + v), train the rest). Adding, removing or
renaming other images never moves it, and byte-identical files always share a split.

One exception keeps "every class has an image in every carved split": when a class's draws leave
a split empty, the class's image whose draw is nearest that split's band is moved there
(`borrowed`). It goes back to its own band once the class has an image there of its own.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from transferflow.data.decode import Decoded
from transferflow.data.layout import MIN_TRAIN_PER_CLASS
from transferflow.errors import DatasetError

BAND_ORDER = ("test", "val")  # test's band first: a change of val_fraction never moves a test image
SPLIT_HASH_PERSON = b"tf-split-v1"  # blake2b personalisation: these draws are for splits only


def split_draws(digests: np.ndarray, seed: int) -> np.ndarray:
    """A uniform value in [0, 1) per image from its hex content digest, keyed by the seed."""
    key = int(seed).to_bytes(8, "little")
    return np.array([int.from_bytes(hashlib.blake2b(bytes.fromhex(digest), digest_size=8, key=key,
                                                    person=SPLIT_HASH_PERSON).digest(), "big") / 2**64
                     for digest in digests], dtype=np.float64)


def split_bands(fractions: dict[str, float]) -> dict[str, tuple[float, float]]:
    """[low, high) of u for each carved split, then train's: {"test": (0, t), "val": (t, t+v), ...}."""
    bands, low = {}, 0.0
    for name in (*BAND_ORDER, *sorted(set(fractions) - set(BAND_ORDER))):
        if name in fractions:
            bands[name] = (low, low + fractions[name])
            low += fractions[name]
    return {**bands, "train": (low, 1.0)}


@dataclass(frozen=True)
class Carved:
    """Positions per split (sorted), and the positions placed outside their band (`borrowed`)."""

    parts: dict[str, np.ndarray]
    borrowed: np.ndarray


def carve_splits(labels: np.ndarray, digests: np.ndarray, fractions: dict[str, float], seed: int,
                 class_names: list[str]) -> Carved:
    """Content-keyed split of positions; `fractions` names the splits to carve (e.g.
    {"val": 0.1, "test": 0.1}), what is left is "train". Every class gets at least one image in
    each carved split and keeps MIN_TRAIN_PER_CLASS in train (borrowing, see the module docstring).
    """
    labels, digests = np.asarray(labels), np.asarray(digests, dtype=object)
    bands = split_bands(fractions)
    draws = split_draws(digests, seed)
    names = list(bands)
    highs = np.array([high for _, high in bands.values()])
    where = np.searchsorted(highs[:-1], draws, side="right").astype(np.int64)  # the band each draw is in
    borrowed: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        _check_class_size(class_names[label], digests[members], list(fractions))
        borrowed += _fill_empty(members, digests, draws, where, bands)
    parts = {name: np.flatnonzero(where == index) for index, name in enumerate(names)}
    return Carved(parts, np.array(sorted(borrowed), dtype=np.int64))


def _check_class_size(name: str, digests: np.ndarray, carved: list[str]) -> None:
    needed = len(carved) + MIN_TRAIN_PER_CLASS
    distinct = len(set(digests.tolist()))
    if distinct < needed:
        copies = (f" ({distinct} distinct: byte-identical files share a split)"
                  if distinct < len(digests) else "")
        raise DatasetError(
            f"class {name!r} has {len(digests)} images{copies}; at least {needed} are needed to carve "
            f"{' and '.join(carved)} splits from it. Add images, or give val/ and test/ folders.")


def _fill_empty(members: np.ndarray, digests: np.ndarray, draws: np.ndarray, where: np.ndarray,
                bands: dict[str, tuple[float, float]]) -> list[int]:
    """Give each split this class has no image in the class's image (with its byte-identical
    copies) whose draw is nearest the split's band, from a split that can spare it. Returns the
    positions moved."""
    moved: list[int] = []
    for index, (low, high) in enumerate(bands.values()):
        if (where[members] == index).any():
            continue
        counts = Counter(where[members].tolist())
        candidates = []
        for digest in sorted(set(digests[members].tolist())):
            group = members[digests[members] == digest]
            donor = int(where[group[0]])
            if counts[donor] - len(group) >= 1:  # the donor keeps an image of this class
                u = draws[group[0]]
                candidates.append((max(low - u, u - high, 0.0), digest, group))
        _, _, group = min(candidates, key=lambda c: (c[0], c[1]))
        where[group] = index
        moved += group.tolist()
    return moved


@dataclass
class Items:
    """A split before decoding: its labels, how to load the images at given positions, and each
    image's content digest (what its split was drawn from)."""

    labels: np.ndarray
    load: Callable[[np.ndarray], Decoded]  # positions -> their images (and which failed)
    name: Callable[[int], str] = str  # position -> what to call it in messages
    digests: np.ndarray | None = None  # hex sha256 of the file's bytes (or a built-in's raw array)
    borrowed: np.ndarray | None = None  # bool per position: placed outside its band (see carve_splits)

    def subset(self, positions: np.ndarray, borrowed: np.ndarray | None = None) -> Items:
        return Items(self.labels[positions], lambda p: self.load(positions[p]),
                     lambda i: self.name(int(positions[i])),
                     None if self.digests is None else self.digests[positions], borrowed)


def complete_splits(splits: dict[str, Items], val_fraction: float, test_fraction: float, seed: int,
                    class_names: list[str]) -> tuple[dict[str, Items], dict[str, str]]:
    """Carve the missing val/test splits out of train (on digests and labels only); report which
    were carved."""
    wanted = {name: share for name, share in (("val", val_fraction), ("test", test_fraction))
              if name not in splits}
    origin = {name: ("carved" if name in wanted else "given") for name in ("val", "test")}
    if not wanted:
        return splits, origin
    train = splits["train"]
    if train.digests is None:
        raise DatasetError("internal: the training images have no content digests to carve splits by")
    carved = carve_splits(train.labels, train.digests, wanted, seed, class_names)
    moved = np.zeros(len(train.labels), bool)
    moved[carved.borrowed] = True
    return {**splits, **{name: train.subset(p, moved[p]) for name, p in carved.parts.items()}}, origin


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    return {class_names[k]: int(v) for k, v in sorted(Counter(labels.tolist()).items())}
