"""The images production is compared on: the new test split minus every image production trained
or validated on, matched by content digest (each version keeps its digests in splits.json.gz).

Scoring production on images it trained on inflates its score and leans the gate towards keeping
it; with stable splits few such images remain, but a production trained with other split settings
(or before splits were stable) may have seen many. Below `minimum_compared` images nothing can be
concluded: the comparisons are skipped and a blessed version is marked candidate (promotion.py).

A production registered before versions kept digests is matched by decoded pixels instead
(`pixel_digests`): its own prepared copy (at its size) against the new test split prepared at
that same size, with the leakage check's exact pixel hash. When its prepared copy is gone, what
it saw is unknown: it is compared on the whole split, and the check says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transferflow.judging.scoring import Scored, score

COMPARISON_SET = "comparison_set"  # the name of the promotion check that says what was compared
MIN_COMPARED = 5  # images: below this a paired comparison says nothing (see minimum_compared)


@dataclass(frozen=True)
class ComparisonSet:
    """Which images of an evaluation set production is compared on. `keep` None means all of them;
    `excluded` None means production's training images are not known (a version registered
    before versions recorded them)."""

    keep: list[int] | None = None  # positions in the set, in its order
    excluded: int | None = 0
    matched_by: str = "content digest"  # or "decoded pixels" (a production without recorded digests)

    def inconclusive(self, mcnemar_alpha: float) -> bool:
        return self.keep is not None and len(self.keep) < minimum_compared(mcnemar_alpha)


def comparison_set(digests: list | None, seen: set | None,
                   matched_by: str = "content digest") -> ComparisonSet:
    """The positions of the set's images (their digests, in order) that are not among `seen`
    (production's train and val digests); all of them, flagged unknown, when either is missing."""
    if digests is None or seen is None:
        return ComparisonSet(None, None)
    keep = [position for position, digest in enumerate(digests) if digest not in seen]
    return ComparisonSet(keep, len(digests) - len(keep), matched_by)


def pixel_digests(ref, splits: tuple[str, ...]) -> list[int]:
    """The exact pixel hash (the leakage check's) of every image of these splits of a prepared
    dataset, in stored order."""
    from transferflow.data import image_hashes, load_prepared

    prepared, found = load_prepared(ref), []
    for split in splits:
        data = prepared.splits.get(split)
        if data is None:
            continue
        batches = ([data[0]] if isinstance(data, tuple)
                   else (x for x, _ in data.dataset(256, shuffle=False, seed=0).as_numpy_iterator()))
        for images in batches:
            found += image_hashes(np.asarray(images).astype(np.uint8))[0].tolist()
    return found


def minimum_compared(mcnemar_alpha: float) -> int:
    """The fewest images production is compared on: MIN_COMPARED, and at least as many as the exact
    one-sided McNemar test needs to find the new version worse at all (the n with 0.5**n < alpha:
    5 at 0.05, 7 at 0.01)."""
    if mcnemar_alpha <= 0:
        return MIN_COMPARED
    return max(MIN_COMPARED, math.floor(math.log2(1 / mcnemar_alpha)) + 1)


def on_comparison_set(challenger: Scored, champion: Scored, chosen: ComparisonSet | None,
                      classes: list[str]) -> tuple[Scored, Scored]:
    """Both models' answers on the comparison set only, with their metrics recomputed there."""
    if chosen is None or chosen.keep is None:
        return challenger, champion
    return _subset(challenger, chosen.keep, classes), _subset(champion, chosen.keep, classes)


def _subset(scored: Scored, keep: list[int], classes: list[str]) -> Scored:
    labels = np.asarray(scored.labels, np.int64)[keep]
    predicted = np.asarray(scored.predicted, np.int64)[keep]
    answers = np.eye(len(classes))[predicted]  # the answers alone: no probabilities to keep
    metrics = {key: value for key, value in score(labels, answers, classes).items()
               if key not in ("top_k", "ece")}
    return Scored(metrics=metrics, labels=labels.tolist(), predicted=predicted.tolist())


def describe_comparison_set(chosen: ComparisonSet, name: str, labels: list[int], classes: list[str],
                            version: int, mcnemar_alpha: float) -> tuple[bool, str]:
    """(skipped, detail) of the promotion check that says what production was compared on."""
    total, who = len(labels), f"production v{version}"
    if chosen.keep is None:
        return False, (f"{who} has no record of the images it trained on (registered before versions kept "
                       f"them): compared on all {total} {name} images, some of which it may have trained or "
                       "validated on, so its score may be inflated")
    left, needed = len(chosen.keep), minimum_compared(mcnemar_alpha)
    how = ("" if chosen.matched_by == "content digest" else
           f", matched by {chosen.matched_by}: it was registered before versions kept digests")
    if chosen.inconclusive(mcnemar_alpha):
        return True, (f"only {left} of {total} {name} images are ones {who} never trained or validated on "
                      f"({chosen.excluded} excluded{how}), fewer than the {needed} a comparison needs: the "
                      "comparisons on them are skipped")
    gone = sorted(set(labels) - {labels[i] for i in chosen.keep})
    absent = (f"; no image of {[classes[c] for c in gone]} is left, so their recall is not compared"
              if gone else "")
    return False, (f"{who} compared on the {left} of {total} {name} images it never trained or validated "
                   f"on ({chosen.excluded} excluded{how}){absent}")
