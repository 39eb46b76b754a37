import hashlib

import numpy as np
import pytest

from transferflow.data import carve_splits, complete_splits
from transferflow.data.splits import split_draws
from transferflow.errors import DatasetError

NAMES = ["a", "b", "c"]


def labels(counts):
    return np.concatenate([np.full(n, k) for k, n in enumerate(counts)])


def digests(count, start=0):
    """Distinct stand-ins for content digests (hex), as many as images."""
    return np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + count)],
                    dtype=object)


def split_of(carved):
    return {int(p): name for name, positions in carved.parts.items() for p in positions}


def test_carving_is_disjoint_complete_and_near_the_fractions():
    y = labels([500, 300, 200])
    parts = carve_splits(y, digests(len(y)), {"val": 0.1, "test": 0.2}, seed=1, class_names=NAMES).parts
    all_indices = np.concatenate(list(parts.values()))
    assert sorted(all_indices.tolist()) == list(range(len(y)))
    for name, share in (("val", 0.1), ("test", 0.2)):
        for label, n in enumerate((500, 300, 200)):
            got = np.sum(y[parts[name]] == label) / n
            assert abs(got - share) <= 3 * np.sqrt(share * (1 - share) / n), (name, label, got)


def test_growing_the_data_moves_no_old_image():
    """The issue's measurement, redone: 10 classes of 200 images, grown by 25%."""
    y_old, classes = labels([200] * 10), list("abcdefghij")
    old = split_of(carve_splits(y_old, digests(len(y_old)), {"val": 0.1, "test": 0.1}, 42, classes))
    y_new = np.concatenate([y_old, labels([50] * 10)])
    d_new = np.concatenate([digests(len(y_old)), digests(500, start=10_000)])
    new = split_of(carve_splits(y_new, d_new, {"val": 0.1, "test": 0.1}, 42, classes))
    assert all(new[p] == split for p, split in old.items())


def test_a_split_depends_on_the_content_not_on_the_other_images_or_their_order():
    y, d = labels([60, 60]), digests(120)
    whole = split_of(carve_splits(y, d, {"val": 0.2, "test": 0.2}, 3, NAMES))
    keep = np.random.default_rng(0).permutation(120)[:90]  # some removed, the rest renamed (reordered)
    part = split_of(carve_splits(y[keep], d[keep], {"val": 0.2, "test": 0.2}, 3, NAMES))
    assert all(part[i] == whole[int(p)] for i, p in enumerate(keep))


def test_byte_identical_images_share_a_split():
    y, d = labels([40, 40]), digests(80)
    d[[5, 17, 33]] = d[2]  # four copies of one image in class 0
    where = split_of(carve_splits(y, d, {"val": 0.25, "test": 0.25}, 0, NAMES))
    assert len({where[p] for p in (2, 5, 17, 33)}) == 1


def test_the_seed_changes_the_draws():
    y, d = labels([40, 40]), digests(80)
    first = carve_splits(y, d, {"val": 0.25}, seed=7, class_names=NAMES).parts
    again = carve_splits(y, d, {"val": 0.25}, seed=7, class_names=NAMES).parts
    other = carve_splits(y, d, {"val": 0.25}, seed=8, class_names=NAMES).parts
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["val"], other["val"])


def test_a_larger_val_fraction_moves_no_test_image():
    y, d = labels([100, 100]), digests(200)
    small = carve_splits(y, d, {"val": 0.1, "test": 0.1}, 0, NAMES).parts
    large = carve_splits(y, d, {"val": 0.3, "test": 0.1}, 0, NAMES).parts
    assert np.array_equal(small["test"], large["test"])
    assert set(small["val"]) < set(large["val"])


def test_small_classes_still_get_one_image_per_split_by_borrowing_the_nearest():
    carved = carve_splits(labels([3, 3]), digests(6), {"val": 0.1, "test": 0.1}, seed=0, class_names=NAMES)
    assert [len(carved.parts[k]) for k in ("train", "val", "test")] == [2, 2, 2]
    assert len(carved.borrowed) >= 2  # at 10% a class of 3 seldom draws val and test by itself
    draws = split_draws(digests(6), 0)
    for label in (0, 1):  # the test image borrowed is the class's lowest draw: nearest test's band [0, 0.1)
        members = np.flatnonzero(labels([3, 3]) == label)
        [test] = [p for p in carved.parts["test"] if p in members]
        assert draws[test] == draws[members].min()


def test_too_small_class_names_the_class():
    with pytest.raises(DatasetError, match="class 'b' has 2 images; at least 3"):
        carve_splits(labels([10, 2]), digests(12), {"val": 0.1, "test": 0.1}, seed=0, class_names=NAMES)


def test_a_class_of_copies_is_too_small_and_says_why():
    d = digests(12)
    d[10:] = d[0]  # class 'b' holds three copies of one file
    d[11] = d[10]
    with pytest.raises(DatasetError, match=r"class 'b' has 2 images \(1 distinct: byte-identical"):
        carve_splits(labels([10, 2]), d, {"val": 0.1, "test": 0.1}, seed=0, class_names=NAMES)


def test_complete_splits_carves_only_what_is_missing():
    from transferflow.data import Decoded, Items

    x = np.arange(40).reshape(40, 1)
    y = labels([20, 20])
    train = Items(y, lambda positions: Decoded(x[positions], []), digests=digests(40))
    given_test = Items(y[:4], lambda positions: Decoded(x[:4][positions], []), digests=digests(4, 100))
    splits, origin = complete_splits({"train": train, "test": given_test}, 0.2, 0.1, 0, NAMES)
    assert origin == {"val": "carved", "test": "given"}
    assert splits["test"] is given_test
    val = splits["val"]
    assert len(val.labels) + len(splits["train"].labels) == 40 and len(val.labels) >= 2
    carved = val.load(np.arange(len(val.labels))).images.ravel()  # positions map back to the source
    assert np.array_equal(y[carved], val.labels)
    assert list(val.digests) == list(digests(40)[carved])  # and each keeps its digest


def test_resize_array_changes_size_and_keeps_dtype():
    from transferflow.data import resize_array

    images = np.full((3, 32, 32, 3), 77, np.uint8)
    resized = resize_array(images, 48)
    assert resized.shape == (3, 48, 48, 3) and resized.dtype == np.uint8
    assert int(resized.mean()) == 77
    assert resize_array(images, 32) is images


@pytest.mark.parametrize("val, test", [(0.38, 0.38), (0.45, 0.3), (0.49, 0.49)])
def test_carving_always_leaves_training_images(val, test):
    parts = carve_splits(labels([4, 5, 3]), digests(12), {"val": val, "test": test}, seed=0,
                         class_names=NAMES).parts
    for name in ("train", "val", "test"):
        assert np.bincount(labels([4, 5, 3])[parts[name]], minlength=3).min() >= 1
