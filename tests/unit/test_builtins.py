"""The built-in dataset registry and its readers, on small files in each official format."""

from __future__ import annotations

import gzip
import re
import struct
import tarfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from transferflow.data.builtins import BUILTINS, FASHION_CLASSES, Arrays, Folder
from transferflow.data.downloads import extract
from transferflow.errors import DatasetError

PIXELS = 32 * 32 * 3
IDX_SUFFIXES = ("-idx3-ubyte.gz", "-idx1-ubyte.gz", "-idx3-ubyte.gz", "-idx1-ubyte.gz")
EXPECTED = {  # name -> (official host, filename suffix of each file)
    "cifar10": ("www.cs.toronto.edu", (".tar.gz",)),
    "cifar100": ("www.cs.toronto.edu", (".tar.gz",)),
    "mnist": ("storage.googleapis.com", IDX_SUFFIXES),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", IDX_SUFFIXES),
    "tf_flowers": ("storage.googleapis.com", (".tgz",)),
}


# ---------------------------------------------------------------- builders for the official formats

def extractor(tmp_path: Path):
    """The `extract` callable readers get: unpack each archive into its own folder."""
    return lambda archive: extract(archive, tmp_path / "x" / archive.name)


def tar_folder(folder: Path, archive: Path) -> Path:
    """A gzipped tar holding `folder` under its own name, as the official archives do."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def cifar_record(labels: list[int], rgb: tuple[int, int, int] | None = None, seed: int = 0) -> np.ndarray:
    """One record: label bytes then the R, G and B planes (flat RGB values, or random)."""
    pixels = (np.repeat(np.array(rgb, dtype=np.uint8), 1024) if rgb is not None
              else np.random.default_rng(seed).integers(0, 256, PIXELS, dtype=np.uint8))
    return np.concatenate([np.array(labels, dtype=np.uint8), pixels])


def gradient_record(labels: list[int]) -> np.ndarray:
    """A record whose R plane holds row*32+col (mod 256), G its inverse, B the row."""
    index = np.arange(1024)
    planes = [index % 256, 255 - index % 256, index // 32]
    return np.concatenate([np.array(labels), *planes]).astype(np.uint8)


def write_cifar10(root: Path, batch_sizes=(3, 3, 3, 3, 3, 2)) -> Path:
    """cifar-10-binary.tar.gz: data_batch_1..5 and test_batch, record i of each labelled i % 10."""
    base = root / "cifar-10-batches-bin"
    base.mkdir(parents=True)
    (base / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for number, (name, count) in enumerate(zip(files, batch_sizes, strict=True)):
        records = [cifar_record([i % 10], seed=number * 10 + i) for i in range(count)]
        if name == "data_batch_1.bin":
            records[:2] = [cifar_record([7], (10, 20, 30)), gradient_record([3])]
        np.stack(records).tofile(base / name)
    return tar_folder(base, root / "cifar-10-binary.tar.gz")


def write_cifar100(root: Path, train: int = 4, test: int = 2) -> Path:
    """cifar-100-binary.tar.gz: records of coarse label 19, fine label 99 - i, pixels."""
    base = root / "cifar-100-binary"
    base.mkdir(parents=True)
    (base / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    (base / "coarse_label_names.txt").write_text("\n".join(f"coarse{i}" for i in range(20)) + "\n")
    for split, count in (("train", train), ("test", test)):
        records = [cifar_record([19, 99 - i], seed=i) for i in range(count)]
        if split == "train":
            records[0] = cifar_record([19, 42], (10, 20, 30))
        np.stack(records).tofile(base / f"{split}.bin")
    return tar_folder(base, root / "cifar-100-binary.tar.gz")


def idx_bytes(array: np.ndarray, magic: int, shape: tuple[int, ...] | None = None) -> bytes:
    """An IDX file: big-endian magic, the (declared) dimensions, then the bytes."""
    dims = shape if shape is not None else array.shape
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + array.astype(np.uint8).tobytes()


def write_gz(path: Path, data: bytes) -> Path:
    """`data` gzipped to `path`."""
    path.write_bytes(gzip.compress(data))
    return path


def idx_images(count: int, seed: int = 0) -> np.ndarray:
    """`count` 28x28 grayscale images; image 0 is a gradient."""
    images = np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    images[0] = np.arange(28 * 28).reshape(28, 28) % 256
    return images


def write_idx_set(root: Path, name: str, train: int = 5, test: int = 3) -> list[Path]:
    """The four gzipped IDX files of `name`, under their official names, in the registry's order."""
    root.mkdir(parents=True, exist_ok=True)
    names = [remote.filename for remote in BUILTINS[name].files]
    contents = [idx_bytes(idx_images(train, 1), 2051), idx_bytes(np.arange(train) % 10, 2049),
                idx_bytes(idx_images(test, 2), 2051), idx_bytes(np.arange(test)[::-1] % 10, 2049)]
    return [write_gz(root / n, data) for n, data in zip(names, contents, strict=True)]


def write_flowers(root: Path, per_class: int = 2) -> Path:
    """flower_photos.tgz with tiny JPEGs in the five class folders and a LICENSE.txt."""
    import tensorflow as tf

    base = root / "flower_photos"
    for index, name in enumerate(("daisy", "dandelion", "roses", "sunflowers", "tulips")):
        (base / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((8 + i, 6, 3), 40 * index, dtype=np.uint8)
            (base / name / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(pixels).numpy())
    (base / "LICENSE.txt").write_text("CC-BY\n")
    return tar_folder(base, root / "flower_photos.tgz")


# ---------------------------------------------------------------- registry

def test_registry_has_exactly_the_expected_entries():
    assert set(BUILTINS) == set(EXPECTED)
    assert all(key == builtin.name for key, builtin in BUILTINS.items())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_entry_points_at_the_official_files(name):
    builtin = BUILTINS[name]
    host, suffixes = EXPECTED[name]
    assert builtin.description.strip() and "\n" not in builtin.description
    assert len(builtin.files) == len(suffixes)
    for remote, suffix in zip(builtin.files, suffixes, strict=True):
        url = urlparse(remote.url)
        assert url.scheme == ("http" if name == "fashion_mnist" else "https")  # S3 website: no TLS
        assert url.hostname == host and not url.query and not url.fragment
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
        assert remote.size > 0
        assert remote.filename == url.path.rsplit("/", 1)[-1] and remote.filename.endswith(suffix)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_files_are_listed_train_then_test(name):
    assert [r.filename.split("-")[:2] for r in BUILTINS[name].files] == [
        ["train", "images"], ["train", "labels"], ["t10k", "images"], ["t10k", "labels"]]


def test_no_two_files_share_a_checksum():
    digests = [r.sha256 for b in BUILTINS.values() for r in b.files]
    assert len(digests) == len(set(digests))


# ---------------------------------------------------------------- readers

def test_cifar10_reader(tmp_path):
    archive = write_cifar10(tmp_path / "src")
    data = BUILTINS["cifar10"].read([archive], extractor(tmp_path))
    assert isinstance(data, Arrays) and data.class_names == [f"class{i}" for i in range(10)]
    assert set(data.splits) == {"train", "test"}
    x, y = data.splits["train"]
    assert x.shape == (15, 32, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert y.dtype == np.int32 and y.tolist() == [7, 3, 2] + [0, 1, 2] * 4
    assert (x[0] == [10, 20, 30]).all()
    rows, cols = np.mgrid[0:32, 0:32]
    assert (x[1, ..., 0] == (rows * 32 + cols) % 256).all()
    assert (x[1, ..., 1] == 255 - (rows * 32 + cols) % 256).all() and (x[1, ..., 2] == rows).all()
    test_x, test_y = data.splits["test"]
    assert test_x.shape == (2, 32, 32, 3) and test_y.tolist() == [0, 1]
    raw = np.fromfile(tmp_path / "src/cifar-10-batches-bin/test_batch.bin", dtype=np.uint8).reshape(-1, 3073)
    assert test_x[1, 0, 1, 2] == raw[1, 1 + 2048 + 1]  # blue plane, row 0, column 1


def test_cifar100_reader_uses_the_fine_labels(tmp_path):
    archive = write_cifar100(tmp_path / "src")
    data = BUILTINS["cifar100"].read([archive], extractor(tmp_path))
    assert isinstance(data, Arrays) and data.class_names == [f"fine{i}" for i in range(100)]
    x, y = data.splits["train"]
    assert x.shape == (4, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert y.tolist() == [42, 98, 97, 96] and (x[0] == [10, 20, 30]).all()
    test_x, test_y = data.splits["test"]
    assert test_x.shape == (2, 32, 32, 3) and test_y.tolist() == [99, 98]
    raw = np.fromfile(tmp_path / "src/cifar-100-binary/test.bin", dtype=np.uint8).reshape(-1, 3074)
    assert test_x[1, 31, 0, 1] == raw[1, 2 + 1024 + 31 * 32]  # green plane, row 31, column 0


@pytest.mark.parametrize("name, class_names", [
    ("mnist", [str(d) for d in range(10)]), ("fashion_mnist", FASHION_CLASSES)])
def test_idx_reader_expands_grayscale_to_rgb(tmp_path, name, class_names):
    files = write_idx_set(tmp_path / "src", name)
    data = BUILTINS[name].read(files, extractor(tmp_path))
    assert isinstance(data, Arrays) and data.class_names == class_names
    x, y = data.splits["train"]
    assert x.shape == (5, 28, 28, 3) and x.dtype == np.uint8 and y.dtype == np.int32
    assert y.tolist() == [0, 1, 2, 3, 4]
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
    assert (x[0, ..., 0] == np.arange(28 * 28).reshape(28, 28) % 256).all()
    assert (x[1:, ..., 0] == idx_images(5, 1)[1:]).all()
    test_x, test_y = data.splits["test"]
    assert test_x.shape == (3, 28, 28, 3) and test_y.tolist() == [2, 1, 0]


def test_fashion_class_names_are_key_safe():
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in FASHION_CLASSES) and len(FASHION_CLASSES) == 10


def test_tf_flowers_reader_returns_the_class_folder(tmp_path):
    archive = write_flowers(tmp_path / "src")
    data = BUILTINS["tf_flowers"].read([archive], extractor(tmp_path))
    assert isinstance(data, Folder) and data.root.name == "flower_photos"
    assert sorted(p.name for p in data.root.iterdir() if p.is_dir()) == [
        "daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert (data.root / "roses" / "1.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    assert (data.root / "LICENSE.txt").is_file()


# ---------------------------------------------------------------- damaged downloads

def assert_damaged(call, filename: str):
    """`call` raises a DatasetError naming `filename` and how to recover."""
    with pytest.raises(DatasetError) as info:
        call()
    message = str(info.value)
    assert filename in message and "damaged" in message and "re-run" in message
    return message


def read_mnist(files: list[Path], tmp_path: Path):
    return lambda: BUILTINS["mnist"].read(files, extractor(tmp_path))


@pytest.mark.parametrize("index, magic", [(0, 2049), (1, 2051), (2, 0x1F8B0803), (3, 0)])
def test_idx_wrong_magic_is_named(tmp_path, index, magic):
    files = write_idx_set(tmp_path / "src", "mnist")
    dims = 3 if index % 2 == 0 else 1
    raw = bytearray(gzip.decompress(files[index].read_bytes()))
    raw[:4] = struct.pack(">I", magic)
    write_gz(files[index], bytes(raw))
    message = assert_damaged(read_mnist(files, tmp_path), files[index].name)
    assert f"magic number {magic}" in message and f"expected {2049 + 2 * (dims == 3)}" in message


def test_idx_truncated_payload_is_named(tmp_path):
    files = write_idx_set(tmp_path / "src", "mnist")
    write_gz(files[2], idx_bytes(idx_images(3)[:, :, :27], 2051, shape=(3, 28, 28)))
    message = assert_damaged(read_mnist(files, tmp_path), "t10k-images-idx3-ubyte.gz")
    assert "3x28x28 = 2352 bytes" in message and str(files[2]) in message


def test_idx_labels_longer_than_declared_are_named(tmp_path):
    files = write_idx_set(tmp_path / "src", "mnist")
    write_gz(files[1], idx_bytes(np.zeros(6), 2049, shape=(5,)))
    assert_damaged(read_mnist(files, tmp_path), "train-labels-idx1-ubyte.gz")


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x08"])
def test_idx_shorter_than_its_header_is_named(tmp_path, data):
    files = write_idx_set(tmp_path / "src", "mnist")
    write_gz(files[3], data)
    assert_damaged(read_mnist(files, tmp_path), "t10k-labels-idx1-ubyte.gz")


def test_truncated_gzip_is_named(tmp_path):
    files = write_idx_set(tmp_path / "src", "mnist")
    files[0].write_bytes(files[0].read_bytes()[:-40])
    assert_damaged(read_mnist(files, tmp_path), "train-images-idx3-ubyte.gz")


def test_idx_image_and_label_counts_must_agree(tmp_path):
    files = write_idx_set(tmp_path / "src", "mnist")
    write_gz(files[1], idx_bytes(np.arange(4), 2049))
    message = assert_damaged(read_mnist(files, tmp_path), "train-images-idx3-ubyte.gz")
    assert "5 images but train-labels-idx1-ubyte.gz has 4 labels" in message


def test_idx_label_outside_the_classes_is_named(tmp_path):
    files = write_idx_set(tmp_path / "src", "fashion_mnist")
    write_gz(files[3], idx_bytes(np.array([0, 10, 1]), 2049))
    message = assert_damaged(lambda: BUILTINS["fashion_mnist"].read(files, extractor(tmp_path)),
                             "t10k-labels-idx1-ubyte.gz")
    assert "label 10 but only 10 classes" in message


def rebuild(archive: Path, change) -> Path:
    """Apply `change` to the archive's source folder and pack it again."""
    folder = next(p for p in archive.parent.iterdir() if p.is_dir())
    change(folder)
    return tar_folder(folder, archive)


def test_cifar10_partial_record_is_named(tmp_path):
    archive = write_cifar10(tmp_path / "src")
    rebuild(archive, lambda base: (base / "data_batch_3.bin").write_bytes(bytes(3 * 3073 - 100)))
    message = assert_damaged(lambda: BUILTINS["cifar10"].read([archive], extractor(tmp_path)),
                             "data_batch_3.bin (from cifar-10-binary.tar.gz)")
    assert "9119 bytes is not a whole number of 3073-byte records" in message and str(archive) in message


def test_cifar100_reader_rejects_cifar10_sized_records(tmp_path):
    archive = write_cifar100(tmp_path / "src")
    rebuild(archive, lambda base: (base / "train.bin").write_bytes(bytes(2 * 3073)))
    message = assert_damaged(lambda: BUILTINS["cifar100"].read([archive], extractor(tmp_path)),
                             "train.bin (from cifar-100-binary.tar.gz)")
    assert "6146 bytes is not a whole number of 3074-byte records" in message


@pytest.mark.parametrize("name, change, problem", [
    ("cifar10", lambda b: (b / "batches.meta.txt").write_text("a\nb\n"), "2 class names, expected 10"),
    ("cifar10", lambda b: (b / "test_batch.bin").unlink(), "missing from the archive"),
    ("cifar10", lambda b: (b / "test_batch.bin").write_bytes(b""), "0 bytes"),
    ("cifar100", lambda b: (b / "fine_label_names.txt").unlink(), "missing from the archive"),
])
def test_cifar_archive_problems_are_named(tmp_path, name, change, problem):
    archive = (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path / "src")
    rebuild(archive, change)
    message = assert_damaged(lambda: BUILTINS[name].read([archive], extractor(tmp_path)), archive.name)
    assert problem in message


def test_cifar_label_outside_the_classes_is_named(tmp_path):
    archive = write_cifar10(tmp_path / "src")
    rebuild(archive, lambda base: cifar_record([10]).reshape(1, -1).tofile(base / "test_batch.bin"))
    assert_damaged(lambda: BUILTINS["cifar10"].read([archive], extractor(tmp_path)), "test_batch.bin")


def test_flowers_archive_without_the_class_folders_is_named(tmp_path):
    (tmp_path / "src" / "flower_photos" / "daisy").mkdir(parents=True)
    archive = tar_folder(tmp_path / "src" / "flower_photos", tmp_path / "src" / "flower_photos.tgz")
    message = assert_damaged(lambda: BUILTINS["tf_flowers"].read([archive], extractor(tmp_path)),
                             "flower_photos (from flower_photos.tgz)")
    assert "'dandelion'" in message
