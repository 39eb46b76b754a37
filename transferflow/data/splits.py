"""Splitting labelled images into train, val and test, and counting them per class."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from transferflow.data.decode import Decoded
from transferflow.data.layout import MIN_TRAIN_PER_CLASS
from transferflow.errors import DatasetError


def carve_splits(labels: np.ndarray, fractions: dict[str, float], seed: int,
                 class_names: list[str]) -> dict[str, np.ndarray]:
    """Stratified, seeded split of indices: every class keeps its share in every split.

    `fractions` names the splits to carve (e.g. {"val": 0.1, "test": 0.1}); what is
    left is "train". Each carved split gets at least one image of every class.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("train", *fractions)}
    for label in np.unique(labels):
        indices = rng.permutation(np.flatnonzero(labels == label))
        needed = len(fractions) + MIN_TRAIN_PER_CLASS
        if len(indices) < needed:
            raise DatasetError(
                f"class {class_names[label]!r} has {len(indices)} images; at least {needed} are "
                f"needed to carve {' and '.join(fractions)} splits from it. Add images, or give "
                "val/ and test/ folders.")
        start = 0
        for position, (name, share) in enumerate(fractions.items()):
            still_needed = len(fractions) - position - 1 + MIN_TRAIN_PER_CLASS
            take = min(max(1, int(round(len(indices) * share))), len(indices) - start - still_needed)
            parts[name].append(indices[start:start + take])
            start += take
        parts["train"].append(indices[start:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


@dataclass
class Items:
    """A split before decoding: its labels, and how to load the images at given positions."""

    labels: np.ndarray
    load: Callable[[np.ndarray], Decoded]  # positions -> their images (and which failed)
    name: Callable[[int], str] = str  # position -> what to call it in messages

    def subset(self, positions: np.ndarray) -> Items:
        return Items(self.labels[positions], lambda p: self.load(positions[p]),
                     lambda i: self.name(int(positions[i])))


def complete_splits(splits: dict[str, Items], val_fraction: float, test_fraction: float, seed: int,
                    class_names: list[str]) -> tuple[dict[str, Items], dict[str, str]]:
    """Carve the missing val/test splits out of train (on labels only); report which were carved."""
    wanted = {name: share for name, share in (("val", val_fraction), ("test", test_fraction))
              if name not in splits}
    origin = {name: ("carved" if name in wanted else "given") for name in ("val", "test")}
    if not wanted:
        return splits, origin
    carved = carve_splits(splits["train"].labels, wanted, seed, class_names)
    return {**splits, **{name: splits["train"].subset(p) for name, p in carved.items()}}, origin


def class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    return {class_names[k]: int(v) for k, v in sorted(Counter(labels.tolist()).items())}
