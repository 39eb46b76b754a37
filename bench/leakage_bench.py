"""The leakage check's two error rates, grey structure alone (phash) against phash confirmed by
colour (what transferflow uses), on the same images in the same run:

- false positives: the share of test images flagged as near duplicates of a training image when
  no image is a copy of another. On aligned, structured images: generated patterns (few shapes,
  many colours; `transferflow.devstack.samples.pattern_image`) and the real hand photos of
  ../shared/datasets/sign-language-digits (like backgrounds and framing), each carved into
  train and a 10% test split several times with different seeds.
- detection: the share of changed copies of training images (re-encoded as JPEG, brighter,
  resized at the source resolution, then prepared at the dataset's size like the originals)
  that are caught as exact or near duplicates.

    .venv/bin/python bench/leakage_bench.py [--photos DIR] [--sizes 32 64] [--carves 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transferflow.data import leakage  # noqa: E402
from transferflow.data.leakage import NEAR_BITS, find_leaks, image_signatures  # noqa: E402
from transferflow.devstack.samples import PATTERNS, pattern_image  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "datasets" / "sign-language-digits" / "images"
METHODS = ("phash only", "phash + colour")


def resized(images: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    return tf.cast(tf.round(tf.image.resize(images, (size, size), antialias=True)), tf.uint8).numpy()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality)).numpy()


def brighter(image: np.ndarray, levels: int) -> np.ndarray:
    return np.clip(image.astype(int) + levels, 0, 255).astype(np.uint8)


CHANGES = {"jpeg q90": lambda image: jpeg(image, 90), "jpeg q75": lambda image: jpeg(image, 75),
           "brighter +10": lambda image: brighter(image, 10),
           "brighter +25": lambda image: brighter(image, 25),
           "resized to 80%": lambda image: resized(image[None], image.shape[0] * 4 // 5)[0],
           "shifted 1 px (not counted)": lambda image: np.roll(image, 1, axis=1)}
COUNTED = [change for change in CHANGES if "not counted" not in change]


def flagged(train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Per method, which test images are found as exact or near duplicates of a training image."""
    train_exact, train_phash, train_colour = image_signatures(train)
    test_exact, test_phash, test_colour = image_signatures(test)
    found = {}
    for method in METHODS:
        colours = (dict(train_colour=train_colour, test_colour=test_colour,
                        colour_levels=leakage.COLOUR_LEVELS) if "colour" in method else {})
        leaks = find_leaks(train_exact, train_phash, test_exact, test_phash, NEAR_BITS, **colours)
        hits = np.zeros(len(test), bool)
        hits[[t for t, _ in leaks.exact + leaks.near]] = True
        found[method] = hits
    return found


def false_positive_rates(images: np.ndarray, carves: int) -> dict[str, list[float]]:
    """Per method, the flagged share of a seeded 10% test carve, once per seed."""
    rates = {method: [] for method in METHODS}
    for seed in range(carves):
        order = np.random.default_rng(seed).permutation(len(images))
        test, train = order[:len(images) // 10], order[len(images) // 10:]
        for method, hits in flagged(images[train], images[test]).items():
            rates[method].append(float(hits.mean()))
    return rates


def detection_rates(sources: np.ndarray, size: int) -> dict[str, dict[str, float]]:
    """Per method and change, the share of changed copies (changed at the source resolution,
    then prepared at `size`) found among the prepared originals."""
    train = resized(sources, size)
    rates = {method: {} for method in METHODS}
    for change, apply in CHANGES.items():
        copies = np.stack([resized(apply(source)[None], size)[0] for source in sources])
        for method, hits in flagged(train, copies).items():
            rates[method][change] = float(hits.mean())
    return rates


def patterns(per_class: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([pattern_image(label, size, rng) for label in range(len(PATTERNS))
                     for _ in range(per_class)])


def photos(folder: Path, size: int) -> np.ndarray:
    from transferflow.data.decode import decode_images

    paths = sorted(folder.rglob("*.JPG")) + sorted(folder.rglob("*.jpg"))
    decoded = decode_images(paths, size)
    return decoded.images


def show_false_positives(what: str, rates: dict[str, list[float]]) -> None:
    for method, values in rates.items():
        print(f"  {what:34s} {method:15s} false positives: mean {np.mean(values):6.2%}, "
              f"worst carve {max(values):6.2%}")


def show_detection(what: str, rates: dict[str, dict[str, float]]) -> None:
    for method, per_change in rates.items():
        counted = [per_change[change] for change in COUNTED]
        cells = ", ".join(f"{change} {rate:.0%}" for change, rate in per_change.items())
        print(f"  {what:34s} {method:15s} detection: worst counted change {min(counted):6.1%} ({cells})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--carves", type=int, default=10)
    parser.add_argument("--patterns-per-class", type=int, default=250)
    parser.add_argument("--copies", type=int, default=300, help="photos copied for the detection rate")
    parser.add_argument("--colour-levels", type=float, default=leakage.COLOUR_LEVELS,
                        help="the colour confirmation's threshold (default: transferflow's)")
    args = parser.parse_args(argv)
    leakage.COLOUR_LEVELS = args.colour_levels
    from transferflow.tflogs import import_tensorflow

    import_tensorflow()
    print(f"near duplicate: phash within {NEAR_BITS} bits; confirmed by 8x8 colour thumbnails within "
          f"{leakage.COLOUR_LEVELS:g} levels")
    for size in args.sizes:
        print(f"{size} px")
        generated = patterns(args.patterns_per_class, size)
        show_false_positives(f"patterns ({len(generated)} images)",
                             false_positive_rates(generated, args.carves))
        sources = patterns(args.copies // len(PATTERNS), max(size, 96), seed=1)
        show_detection(f"patterns ({len(sources)} copies)", detection_rates(sources, size))
        if args.photos.is_dir():
            real = photos(args.photos, size)
            show_false_positives(f"hand photos ({len(real)} images)", false_positive_rates(real, args.carves))
            originals = photos(args.photos, 100)
            chosen = np.random.default_rng(0).choice(len(originals), min(args.copies, len(originals)), False)
            show_detection(f"hand photos ({len(chosen)} copies)", detection_rates(originals[chosen], size))
        else:
            print(f"  (no photos at {args.photos}: pass --photos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
