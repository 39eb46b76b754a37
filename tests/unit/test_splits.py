import numpy as np
import pytest

from transferflow.data import carve_splits, complete_splits
from transferflow.errors import DatasetError

NAMES = ["a", "b", "c"]


def labels(counts):
    return np.concatenate([np.full(n, k) for k, n in enumerate(counts)])


def test_carving_is_stratified_disjoint_and_complete():
    y = labels([50, 30, 20])
    parts = carve_splits(y, {"val": 0.1, "test": 0.2}, seed=1, class_names=NAMES)
    all_indices = np.concatenate(list(parts.values()))
    assert sorted(all_indices.tolist()) == list(range(len(y)))
    for name, share in (("val", 0.1), ("test", 0.2)):
        counts = np.bincount(y[parts[name]], minlength=3)
        assert counts.tolist() == [round(50 * share), round(30 * share), round(20 * share)]


def test_carving_is_seeded():
    y = labels([40, 40])
    first = carve_splits(y, {"val": 0.25}, seed=7, class_names=NAMES)
    again = carve_splits(y, {"val": 0.25}, seed=7, class_names=NAMES)
    other = carve_splits(y, {"val": 0.25}, seed=8, class_names=NAMES)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["val"], other["val"])


def test_small_classes_still_get_one_image_per_split():
    parts = carve_splits(labels([3, 3]), {"val": 0.1, "test": 0.1}, seed=0, class_names=NAMES)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [2, 2, 2]


def test_too_small_class_names_the_class():
    with pytest.raises(DatasetError, match="class 'b' has 2 images; at least 3"):
        carve_splits(labels([10, 2]), {"val": 0.1, "test": 0.1}, seed=0, class_names=NAMES)


def test_complete_splits_carves_only_what_is_missing():
    from transferflow.data import Decoded, Items

    x = np.arange(40).reshape(40, 1)
    y = labels([20, 20])
    train = Items(y, lambda positions: Decoded(x[positions], []))
    given_test = Items(y[:4], lambda positions: Decoded(x[:4][positions], []))
    splits, origin = complete_splits({"train": train, "test": given_test}, 0.1, 0.1, 0, NAMES)
    assert origin == {"val": "carved", "test": "given"}
    assert splits["test"] is given_test
    assert len(splits["val"].labels) == 4 and len(splits["train"].labels) == 36
    carved = splits["val"].load(np.arange(4)).images.ravel()  # positions map back to the source
    assert np.array_equal(y[carved], splits["val"].labels)


def test_resize_array_changes_size_and_keeps_dtype():
    from transferflow.data import resize_array

    images = np.full((3, 32, 32, 3), 77, np.uint8)
    resized = resize_array(images, 48)
    assert resized.shape == (3, 48, 48, 3) and resized.dtype == np.uint8
    assert int(resized.mean()) == 77
    assert resize_array(images, 32) is images


@pytest.mark.parametrize("val, test", [(0.38, 0.38), (0.45, 0.3), (0.49, 0.49)])
def test_carving_always_leaves_training_images(val, test):
    parts = carve_splits(labels([4, 5, 3]), {"val": val, "test": test}, seed=0, class_names=NAMES)
    assert np.bincount(labels([4, 5, 3])[parts["train"]], minlength=3).min() >= 1
