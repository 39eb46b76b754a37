"""Built-in datasets: where each one's files are downloaded from, their checksums, and a
reader for the official file format. No TensorFlow here: array datasets are parsed with
numpy, and folder-of-images datasets are returned as a folder for the folder scanner."""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferflow.errors import DatasetError

Extract = Callable[[Path], Path]  # archive -> folder it was (safely) extracted into

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
CIFAR_PIXELS = 32 * 32 * 3


@dataclass(frozen=True)
class Remote:
    """One file to download, with its expected sha256 and size in bytes."""

    url: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        """The last path part of the URL."""
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Arrays:
    """Decoded splits: name -> (uint8 N,H,W,3 RGB images, int32 labels)."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: list[str]


@dataclass(frozen=True)
class Folder:
    """A folder with one subfolder of images per class."""

    root: Path


@dataclass(frozen=True)
class Builtin:
    """A named dataset: its files and the reader that turns them into arrays or a folder."""

    name: str
    description: str
    files: tuple[Remote, ...]
    read: Callable[[list[Path], Extract], Arrays | Folder]


# ---------------------------------------------------------------- errors

def _damaged(path: Path, problem: str, cached: tuple[Path, ...] = ()) -> DatasetError:
    """The error for a file without the official layout; `cached` are what to delete (default `path`)."""
    cached = cached or (path,)
    inside = f" (from {cached[-1].name})" if path not in cached else ""
    return DatasetError(f"{path.name}{inside} is damaged: {problem}. The download is damaged or incomplete: "
                        f"delete {' and '.join(map(str, cached))} and re-run to download it again.")


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

def _gunzip(path: Path) -> bytes:
    """The decompressed bytes of a .gz file."""
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, f"not a complete gzip file ({exc})") from None


def _idx_payload(path: Path, magic: int, dims: int) -> tuple[tuple[int, ...], bytes]:
    """Check an IDX file's magic number and declared sizes; return its shape and data."""
    raw = _gunzip(path)
    header = 4 * (1 + dims)
    if len(raw) < header:
        raise _damaged(path, f"only {len(raw)} bytes, shorter than the IDX header")
    found, *shape = struct.unpack(f">{1 + dims}I", raw[:header])
    if found != magic:
        raise _damaged(path, f"IDX magic number {found}, expected {magic}")
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise _damaged(path, f"header declares {'x'.join(map(str, shape))} = {expected} bytes of data "
                             f"but {len(raw) - header} follow")
    return tuple(shape), raw[header:]


def read_idx_images(path: Path) -> np.ndarray:
    """Grayscale IDX images as uint8 (N, rows, cols, 3) with three identical channels."""
    shape, data = _idx_payload(path, IDX_IMAGES_MAGIC, 3)
    gray = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    return np.repeat(gray[..., np.newaxis], 3, axis=-1)


def read_idx_labels(path: Path, classes: int) -> np.ndarray:
    """IDX labels as int32, each checked to be below `classes`."""
    _, data = _idx_payload(path, IDX_LABELS_MAGIC, 1)
    labels = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    _check_labels(path, labels, classes)
    return labels


def _check_labels(path: Path, labels: np.ndarray, classes: int, cached: tuple[Path, ...] = ()) -> None:
    """Raise if any label is not a class index."""
    if labels.size and int(labels.max()) >= classes:
        raise _damaged(path, f"label {int(labels.max())} but only {classes} classes", cached)


def _idx_split(images_path: Path, labels_path: Path, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One split from an images file and its labels file, whose counts must agree."""
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path, classes)
    if len(images) != len(labels):
        raise _damaged(images_path, f"{len(images)} images but {labels_path.name} has {len(labels)} labels",
                       (images_path, labels_path))
    return images, labels


def _idx_reader(class_names: list[str]) -> Callable[[list[Path], Extract], Arrays]:
    """A reader for the four MNIST-layout files: train images, train labels, test images, test labels."""

    def read(files: list[Path], extract: Extract) -> Arrays:
        train_x, train_y, test_x, test_y = files
        classes = len(class_names)
        return Arrays({"train": _idx_split(train_x, train_y, classes),
                       "test": _idx_split(test_x, test_y, classes)}, list(class_names))

    return read


def _idx_files(base: str, sizes_and_digests: list[tuple[int, str]]) -> tuple[Remote, ...]:
    """The four IDX files under `base`, in the order the IDX reader expects."""
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    return tuple(Remote(base + name, digest, size) for name, (size, digest) in zip(names, sizes_and_digests,
                                                                                   strict=True))


# ---------------------------------------------------------------- CIFAR binary versions

def _names(path: Path, classes: int, cached: tuple[Path, ...]) -> list[str]:
    """Class names, one per line, blank lines ignored; there must be `classes` of them."""
    if not path.is_file():
        raise _damaged(path, "missing from the archive", cached)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != classes:
        raise _damaged(path, f"{len(names)} class names, expected {classes}", cached)
    return names


def _cifar_records(path: Path, record: int, cached: tuple[Path, ...]) -> np.ndarray:
    """A CIFAR binary file as (N, record) uint8, checked to hold whole records."""
    if not path.is_file():
        raise _damaged(path, "missing from the archive", cached)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % record:
        raise _damaged(path, f"{raw.size} bytes is not a whole number of {record}-byte records", cached)
    return raw.reshape(-1, record)


def _cifar_split(paths: list[Path], label_bytes: int, classes: int, cached: tuple[Path, ...]):
    """Images (R, G, B planes of 32x32 after the label bytes) and the last label byte's labels."""
    xs, ys = [], []
    for path in paths:
        raw = _cifar_records(path, label_bytes + CIFAR_PIXELS, cached)
        labels = raw[:, label_bytes - 1].astype(np.int32)
        _check_labels(path, labels, classes, cached)
        xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def read_cifar10(files: list[Path], extract: Extract) -> Arrays:
    """CIFAR-10 binary version: records of 1 label byte + 3072 planar pixel bytes."""
    archive, extracted = files[0], extract(files[0])
    cached, base = (extracted, archive), extracted / "cifar-10-batches-bin"
    names = _names(base / "batches.meta.txt", 10, cached)
    train = [base / f"data_batch_{i}.bin" for i in range(1, 6)]
    return Arrays({"train": _cifar_split(train, 1, 10, cached),
                   "test": _cifar_split([base / "test_batch.bin"], 1, 10, cached)}, names)


def read_cifar100(files: list[Path], extract: Extract) -> Arrays:
    """CIFAR-100 binary version, fine labels: records of coarse byte, fine byte, 3072 pixel bytes."""
    archive, extracted = files[0], extract(files[0])
    cached, base = (extracted, archive), extracted / "cifar-100-binary"
    names = _names(base / "fine_label_names.txt", 100, cached)
    return Arrays({split: _cifar_split([base / f"{split}.bin"], 2, 100, cached)
                   for split in ("train", "test")}, names)


# ---------------------------------------------------------------- folders of images

FLOWER_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def read_tf_flowers(files: list[Path], extract: Extract) -> Folder:
    """The flower_photos folder: one subfolder of JPEGs per class (and a LICENSE.txt)."""
    archive, extracted = files[0], extract(files[0])
    root = extracted / "flower_photos"
    missing = [c for c in FLOWER_CLASSES if not (root / c).is_dir()]
    if missing:
        raise _damaged(root, f"class folders {missing} are missing", (extracted, archive))
    return Folder(root)


# ---------------------------------------------------------------- the registry

FASHION_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]

BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    Builtin("cifar10", "CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 train, 10,000 test)",
            (Remote("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd", 170052171),),
            read_cifar10),
    Builtin("cifar100", "CIFAR-100: 60,000 32x32 colour images, 100 fine classes (50,000 train, 10,000 test)",
            (Remote("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                    "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec", 168513733),),
            read_cifar100),
    Builtin("mnist", "MNIST: 70,000 28x28 handwritten digits in 10 classes (60,000 train, 10,000 test)",
            _idx_files("https://storage.googleapis.com/cvdf-datasets/mnist/", [
                (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
                (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
                (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
                (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6")]),
            _idx_reader([str(d) for d in range(10)])),
    Builtin("fashion_mnist", "Fashion-MNIST: 70,000 28x28 clothing images in 10 classes "
                             "(60,000 train, 10,000 test)",
            _idx_files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", [
                (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
                (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
                (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
                (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")]),
            _idx_reader(FASHION_CLASSES)),
    Builtin("tf_flowers", "TF Flowers: 3,670 flower photos of varying sizes in 5 classes (no test split)",
            (Remote("https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz",
                    "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c", 228813984),),
            read_tf_flowers),
)}
