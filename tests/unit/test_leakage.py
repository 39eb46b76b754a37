"""The train/test leakage check: which test images duplicate training images, and when a run fails."""

import logging

import numpy as np
import pytest
import scipy.fft

from tests.conftest import Lines
from transferflow.data import leakage
from transferflow.data.leakage import (
    NEAR_BITS,
    HashBook,
    LeakageReport,
    check_leakage,
    colour_distance,
    find_leaks,
    image_hashes,
    image_signatures,
)
from transferflow.devstack.samples import PATTERNS, pattern_image
from transferflow.errors import DatasetError


def photo(seed: int, size: int = 96) -> np.ndarray:
    """A photo-like uint8 image: soft coloured blobs on a lit gradient, a little sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = 60 + 80 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)[..., None] + rng.uniform(0, 60, 3)
    for _ in range(6):
        cy, cx, radius = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        image = image + blob[..., None] * rng.uniform(-120, 120, 3)
    return np.clip(image + rng.normal(0, 2, image.shape), 0, 255).astype(np.uint8)


def resized(images: np.ndarray, size: int) -> np.ndarray:
    import tensorflow as tf

    return tf.cast(tf.round(tf.image.resize(images, (size, size), antialias=True)), tf.uint8).numpy()


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_jpeg(tf.io.encode_jpeg(image, quality=quality)).numpy()


def distance(a: np.ndarray, b: np.ndarray) -> int:
    return int(leakage._popcount(image_hashes(a[None])[1] ^ image_hashes(b[None])[1])[0])


def test_phash_is_the_dct_of_the_area_resized_luma():
    images = np.stack([photo(1, 64), photo(2, 64)])
    gray = images.astype(np.float64) @ [0.299, 0.587, 0.114]
    small = gray.reshape(2, 32, 2, 32, 2).mean(axis=(2, 4))
    low = scipy.fft.dctn(small, type=2, norm="ortho", axes=(1, 2))[:, :8, :8].reshape(2, 64)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    expected = [sum(1 << int(i) for i in np.flatnonzero(row)) for row in bits]
    assert image_hashes(images)[1].tolist() == expected


def test_identical_pixels_share_the_exact_digest_and_others_do_not():
    image = photo(3, 32)
    brighter = np.clip(image.astype(int) + 1, 0, 255).astype(np.uint8)
    exact, _ = image_hashes(np.stack([image, image.copy(), brighter]))
    assert exact[0] == exact[1] != exact[2]


CHANGES = {"jpeg q90": lambda source: jpeg(source, 90), "jpeg q75": lambda source: jpeg(source, 75),
           "brighter +10": lambda source: np.clip(source.astype(int) + 10, 0, 255).astype(np.uint8),
           "resized to 80 px": lambda source: resized(source[None], 80)[0]}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_copy_of_a_photo_is_a_near_duplicate(change):
    """The copy is changed at its source resolution, then prepared at 32 px like the original."""
    sources = [photo(seed) for seed in range(20)]
    near = [distance(resized(source[None], 32)[0], resized(CHANGES[change](source)[None], 32)[0]) <= NEAR_BITS
            for source in sources]
    assert sum(near) >= 16, f"{change}: only {sum(near)} of 20 copies found"  # 17-19 measured


def test_distinct_photos_are_not_near_duplicates():
    hashes = image_hashes(np.stack([photo(seed, 32) for seed in range(40)]))[1]
    distances = leakage._popcount(hashes[:, None] ^ hashes[None, :])
    np.fill_diagonal(distances, 64)
    assert distances.min() > NEAR_BITS


def test_find_leaks_counts_exact_then_near_duplicates():
    train = np.stack([photo(seed, 32) for seed in range(10)])
    brighter = np.clip(train[6].astype(int) + 10, 0, 255).astype(np.uint8)
    test = np.stack([train[3], brighter, photo(50, 32), photo(51, 32)])
    leaks = find_leaks(*image_hashes(train), *image_hashes(test), near_bits=NEAR_BITS)
    assert leaks.exact == [(0, 3)] and leaks.near == [(1, 6)]
    assert leaks.candidates == 3 and leaks.sampled is None and leaks.share(len(test)) == 0.5


def pattern_set(per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([pattern_image(label, 32, rng) for label in range(len(PATTERNS))
                     for _ in range(per_class)])


def test_one_shape_in_other_colours_is_not_a_near_duplicate():
    """Aligned patterns of 4 shapes in random colours: the phash alone calls most of them copies
    of each other; confirmed by colour, none is."""
    train, test = pattern_set(30, seed=0), pattern_set(10, seed=1)
    (train_exact, train_phash, train_colour), (test_exact, test_phash, test_colour) = (
        image_signatures(train), image_signatures(test))
    grey_only = find_leaks(train_exact, train_phash, test_exact, test_phash)
    assert len(grey_only.near) > len(test) // 3  # what users saw: distinct images refused
    leaks = find_leaks(train_exact, train_phash, test_exact, test_phash, train_colour=train_colour,
                       test_colour=test_colour)
    assert leaks.exact == [] and leaks.near == []


def test_changed_copies_of_patterns_are_still_confirmed_by_colour():
    train = pattern_set(10, seed=2)
    brighter = np.clip(train[:8].astype(int) + 10, 0, 255).astype(np.uint8)
    recoded = np.stack([jpeg(image, 90) for image in train[8:16]])
    signatures = image_signatures(train), image_signatures(np.concatenate([brighter, recoded]))
    leaks = find_leaks(*signatures[0][:2], *signatures[1][:2], train_colour=signatures[0][2],
                       test_colour=signatures[1][2])
    found = dict(leaks.near)
    assert sum(found.get(i) == i for i in range(8)) == 8  # every brighter copy, matched to its original
    assert sum(found.get(8 + i) == 8 + i for i in range(8)) >= 6  # JPEG: the phash misses a few


def test_colour_distance_ignores_a_uniform_brightness_change_but_not_other_colours():
    rng = np.random.default_rng(3)
    thumbs = rng.integers(30, 200, (2, 8, 8, 3)).astype(np.uint8)
    brighter = (thumbs.astype(int) + 25).astype(np.uint8)
    assert colour_distance(thumbs, brighter).tolist() == [0.0, 0.0]
    swapped = thumbs[..., ::-1]  # the same cells, red and blue exchanged
    assert (colour_distance(thumbs, swapped) > 20).all()


def test_chunked_comparison_gives_the_unchunked_result():
    rng = np.random.default_rng(0)
    train_phash = rng.integers(0, 2**63, 300, dtype=np.uint64)
    test_phash = np.concatenate([train_phash[::7] ^ np.uint64(0b101), rng.integers(0, 2**63, 50, np.uint64)])
    train_exact, test_exact = np.arange(300, dtype=np.uint64), np.arange(1000, 1000 + len(test_phash),
                                                                         dtype=np.uint64)
    whole = find_leaks(train_exact, train_phash, test_exact, test_phash, 2)
    chunked = find_leaks(train_exact, train_phash, test_exact, test_phash, 2, chunk_pairs=700)
    assert whole == chunked and len(whole.near) == len(train_phash[::7])
    colours = np.random.default_rng(1).integers(0, 256, (len(train_phash) + len(test_phash), 8, 8, 3))
    train_colour, test_colour = colours[:300].astype(np.uint8), colours[300:].astype(np.uint8)
    test_colour[:len(train_phash[::7])] = train_colour[::7]  # the planted copies keep their colours
    coloured = [find_leaks(train_exact, train_phash, test_exact, test_phash, 2, chunk_pairs=chunk,
                           train_colour=train_colour, test_colour=test_colour) for chunk in (1 << 22, 700)]
    assert coloured[0] == coloured[1] == whole


def test_popcount_fallback_agrees_with_numpy(monkeypatch):
    values = np.random.default_rng(1).integers(0, 2**63, (3, 5), dtype=np.uint64)
    expected = np.array([[bin(int(v)).count("1") for v in row] for row in values])
    assert (leakage._popcount(values) == expected).all()
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert (leakage._popcount(values) == expected).all()


def test_very_large_splits_compare_a_sample_and_say_so():
    rng = np.random.default_rng(2)
    train_phash = rng.integers(0, 2**63, 100, dtype=np.uint64)
    test_phash = np.concatenate([train_phash[:40], rng.integers(0, 2**63, 60, np.uint64)])
    leaks = find_leaks(np.zeros(100, np.uint64), train_phash, np.ones(100, np.uint64), test_phash, 2,
                       max_pairs=5000)
    assert leaks.sampled == 50 and len(leaks.near) < 40
    assert leaks.share(100) == pytest.approx(len(leaks.near) * 100 / 50 / 100)


def test_the_report_names_the_files_and_skips_undecoded_images():
    book = HashBook()
    train = np.stack([photo(seed, 32) for seed in range(4)])
    book.add("train", train, np.array([0, 2, 3, 4]), lambda i: f"train/c/{i}.png")  # 1 did not decode
    book.add("test", np.stack([photo(9, 32), train[2]]), np.array([0, 1]), lambda i: f"test/c/{i}.png")
    report = book.report()
    assert (report.test_images, report.train_images, report.exact, report.near) == (2, 4, 1, 0)
    assert report.examples == [["test/c/1.png", "train/c/3.png"]] and report.share == 0.5


def report(exact=0, near=0, test=100) -> LeakageReport:
    examples = [[f"test/a/{i}.png", f"train/a/{i}.png"] for i in range(min(exact + near, 10))]
    return LeakageReport(method="m", test_images=test, train_images=400, exact=exact, near=near,
                         share=(exact + near) / test, examples=examples, near_bits=NEAR_BITS)


def lines_logger(name: str) -> tuple[logging.Logger, Lines]:
    logger, lines = logging.getLogger(name), Lines()
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    return logger, lines


def test_above_the_limit_the_check_fails_naming_examples():
    with pytest.raises(DatasetError, match=r"dataset shapes: 8 of 100 test images \(8.0%\) duplicate "
                       r"training images: 6 exact, 2 near, e.g. \(test ~ train\) test/a/0.png ~ "
                       r"train/a/0.png, .*test/a/4.png ~ train/a/4.png; above the limit of 5.0% "
                       r".*raise max_leakage") as info:
        check_leakage(report(exact=6, near=2), 0.05, "shapes")
    assert "test/a/5.png" not in str(info.value)  # five examples at most


def test_within_the_limit_the_check_warns_with_the_counts():
    logger, lines = lines_logger("leak-warn")
    check_leakage(report(exact=1, near=2), 0.05, "shapes", logger)
    assert lines.lines == ["dataset shapes: 3 of 100 test images (3.0%) duplicate training images: 1 exact, "
                           "2 near, e.g. (test ~ train) test/a/0.png ~ train/a/0.png, test/a/1.png ~ "
                           "train/a/1.png, test/a/2.png ~ train/a/2.png; within max_leakage 5.0%"]


def test_a_clean_or_unchecked_dataset_logs_one_line():
    logger, lines = lines_logger("leak-clean")
    check_leakage(report(), 0.0, "shapes", logger)
    check_leakage(None, 0.0, "old", logger)
    assert lines.lines[0].startswith("dataset shapes: no test image duplicates a training image")
    assert lines.lines[1] == "dataset old: train/test leakage not checked (prepared before the check existed)"
