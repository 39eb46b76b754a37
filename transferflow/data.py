"""The dataset stage: find the source, check it, decode and resize the images,
split them, fingerprint them, and store the prepared arrays in object storage.

Sources: a built-in name (cifar10), an http(s) archive URL (optional
#sha256=... fragment), s3://bucket/prefix/ (folder or archive), or a local
folder / archive / file:// URI. Folder layout: one subfolder per class,
optionally under train/, val/ and test/.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from transferflow import downloads, storage
from transferflow.config import dataset_slug
from transferflow.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
SPLITS = ("train", "val", "test")
MIN_TRAIN_PER_CLASS = 1
PREPARED_FORMAT = 1  # bump when the prepared layout changes, so old caches are not reused


@dataclass(frozen=True)
class Builtin:
    url: str
    sha256: str
    size: int
    reader: Callable[[Path], tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]]


def _read_cifar10(root: Path):
    """CIFAR-10 binary version: records of 1 label byte + 32x32x3 planar bytes."""
    base = root / "cifar-10-batches-bin"
    names = [n for n in (base / "batches.meta.txt").read_text().split() if n]

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raw = np.concatenate([np.fromfile(base / f, dtype=np.uint8) for f in files]).reshape(-1, 3073)
        images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), raw[:, 0].astype(np.int32)

    train = read([f"data_batch_{i}.bin" for i in range(1, 6)])
    return {"train": train, "test": read(["test_batch.bin"])}, names


BUILTINS: dict[str, Builtin] = {
    "cifar10": Builtin(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        size=170052171,
        reader=_read_cifar10,
    ),
}


class DatasetRef(BaseModel):
    """A prepared dataset in object storage: what tasks pass to each other."""

    name: str
    source: str
    fingerprint: str
    uri: str
    class_names: list[str]
    image_size: int
    split_origin: dict[str, str]  # split -> "given" | "carved"
    counts: dict[str, dict[str, int]]  # split -> class -> images


@dataclass
class PreparedDataset:
    """Decoded, resized uint8 images (N, size, size, 3) and int labels per split."""

    class_names: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    def save(self, path: Path) -> None:
        arrays = {f"{s}_{part}": arr for s, (x, y) in self.splits.items()
                  for part, arr in (("x", x), ("y", y))}
        np.savez(path, class_names=np.array(self.class_names), **arrays)

    @classmethod
    def load(cls, path: Path) -> PreparedDataset:
        with np.load(path, allow_pickle=False) as npz:
            return cls([str(n) for n in npz["class_names"]],
                       {s: (npz[f"{s}_x"], npz[f"{s}_y"]) for s in SPLITS})

    def counts(self) -> dict[str, dict[str, int]]:
        return {s: {self.class_names[k]: int(v) for k, v in sorted(Counter(y.tolist()).items())}
                for s, (_, y) in self.splits.items()}


@dataclass
class FolderScan:
    """Image files found in a folder tree, per split, with class indices."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)]
    ignored: int


# ---------------------------------------------------------------- locating sources

def locate(dataset: str, logger=log) -> tuple[str, Path | None]:
    """Return ('builtin', None) for built-ins, else ('folder', local folder with the images)."""
    if dataset in BUILTINS:
        return "builtin", None
    if dataset.startswith(("http://", "https://")):
        return "folder", _fetch_url_archive(dataset, logger)
    if dataset.startswith("s3://"):
        return "folder", _fetch_s3(dataset, logger)
    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.exists():
        known = ", ".join(sorted(BUILTINS))
        raise DatasetError(
            f"dataset {dataset!r} does not exist: pass a folder with one subfolder per class, "
            f"an archive, s3://bucket/prefix/, an http(s) URL, or a built-in ({known})")
    if path.is_file():
        return "folder", _extract_cached(path, hashlib.sha256(str(path.resolve()).encode()).hexdigest())
    return "folder", path


def _fetch_url_archive(url: str, logger) -> Path:
    base, checksum = downloads.Checksum.from_fragment(url)
    if not base.lower().endswith(ARCHIVE_SUFFIXES):
        raise DatasetError(f"{base} is not an archive URL (.tar.gz, .tgz, .tar, .zip)")
    key = hashlib.sha256(base.encode()).hexdigest()[:16]
    archive = storage.cache_dir() / "downloads" / key / base.rsplit("/", 1)[-1]
    downloads.download(base, archive, checksum, logger=logger)
    return _extract_cached(archive, key, discard_on_failure=True)


def _extract_cached(archive: Path, key: str, discard_on_failure: bool = False) -> Path:
    """Unpack once per archive content. A downloaded archive that fails to unpack is
    deleted, so the next run downloads it again instead of failing on the same bytes."""
    target = storage.cache_dir() / "extracted" / key
    stamp = target / ".source-sha256"
    digest = storage.sha256_file(archive)
    if not (stamp.is_file() and stamp.read_text() == digest):
        try:
            downloads.extract(archive, target)
        except DatasetError:
            if discard_on_failure:
                archive.unlink(missing_ok=True)
            raise
        stamp.write_text(digest)
    return target


def _fetch_s3(uri: str, logger) -> Path:
    location = storage.parse_s3_uri(uri)
    if location.key.lower().endswith(ARCHIVE_SUFFIXES):
        archive = storage.cached_download(uri)
        return _extract_cached(archive, hashlib.sha256(uri.encode()).hexdigest()[:16],
                               discard_on_failure=True)
    prefix = location.key.rstrip("/") + "/" if location.key else ""
    objects = [o for o in storage.list_keys(location.bucket, prefix) if not o["Key"].endswith("/")]
    if not objects:
        raise DatasetError(f"dataset {uri} has no objects at {storage.endpoint_label()}: "
                           "check the bucket and prefix")
    target = storage.cache_dir() / "s3" / location.bucket / prefix
    logger.info("syncing %d objects from %s", len(objects), uri)
    wanted = {safe_join(target, o["Key"][len(prefix):], uri): o for o in objects}
    _remove_stale(target, set(wanted))

    def fetch(item: tuple[Path, dict]) -> None:
        local, obj = item
        stamp = local.with_name(local.name + ".etag")
        if local.is_file() and stamp.is_file() and stamp.read_text() == obj["ETag"]:
            return
        storage.download_file(location.bucket, obj["Key"], local)
        stamp.write_text(obj["ETag"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, wanted.items()))
    return target


def safe_join(root: Path, relative: str, source: str) -> Path:
    """root/relative, refusing names that would land outside root (.., absolute paths)."""
    parts = Path(relative).parts
    if not relative or Path(relative).is_absolute() or ".." in parts:
        raise DatasetError(f"{source} holds an object named {relative!r} that would be written "
                           "outside the dataset folder; rename or remove it")
    return root.joinpath(*parts)


def _remove_stale(target: Path, wanted: set[Path]) -> None:
    """Delete local copies of objects that are gone from the bucket, so they are not trained on."""
    if not target.is_dir():
        return
    for path in target.rglob("*"):
        if path.is_file():
            original = path.with_name(path.name.removesuffix(".etag"))
            if original not in wanted:
                path.unlink()
    for folder in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


# ---------------------------------------------------------------- folder layout

def scan_folder(root: Path, label: str | None = None) -> FolderScan:
    """Find class folders (optionally under train/val/test) and their image files.

    `label` names the dataset in error messages (the URI the user gave), if not `root`.
    """
    try:
        return _scan(root)
    except DatasetError as exc:
        if label is None:
            raise
        raise DatasetError(str(exc).replace(str(root), label)) from None


def _scan(root: Path) -> FolderScan:
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(f"dataset {root} has {', '.join(split_dirs)}/ but no train/ folder")
    if not split_dirs:
        split_dirs = {"train": _single_top_folder(root)}
    class_names = _class_dirs(split_dirs["train"])
    if not class_names:
        raise DatasetError(f"dataset {root} is empty: it needs one subfolder per class with images in it")
    files: dict[str, list[tuple[Path, int]]] = {}
    ignored = 0
    for split, folder in split_dirs.items():
        extra = sorted(set(_class_dirs(folder)) - set(class_names))
        if extra:
            raise DatasetError(f"dataset {root}: {split}/ has classes {extra} that train/ lacks; "
                               "every class must have training images")
        files[split], skipped = _image_files(folder, class_names)
        ignored += skipped
    _check_classes(root, class_names, files["train"])
    return FolderScan(root, class_names, files, ignored)


def _single_top_folder(root: Path) -> Path:
    """Archives often wrap everything in one folder (flowers/daisy/...): look inside it."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        inner = entries[0]
        if any((inner / s).is_dir() for s in SPLITS):
            raise DatasetError(f"dataset {root}: put train/ val/ test/ at the top of the dataset, "
                               f"not inside {inner.name}/")
        if len(_class_dirs(inner)) > 1:
            return inner
    return root


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, class_names: list[str]) -> tuple[list[tuple[Path, int]], int]:
    found, ignored = [], 0
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name.endswith(".etag"):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((path, label))
            else:
                ignored += 1
    return found, ignored


def _check_classes(root: Path, class_names: list[str], train: list[tuple[Path, int]]) -> None:
    counts = Counter(label for _, label in train)
    empty = [name for i, name in enumerate(class_names) if counts[i] < MIN_TRAIN_PER_CLASS]
    if empty:
        raise DatasetError(f"dataset {root}: class folders {empty} have no images "
                           "(.jpg, .jpeg, .png, .bmp, .gif); add images or remove the folders")
    if len(class_names) < 2:
        raise DatasetError(f"dataset {root} has a single class {class_names}: a classifier needs "
                           "at least 2 class folders")


def fingerprint_folder(scan: FolderScan) -> str:
    """Content hash of the file list and bytes: same images, same fingerprint."""
    digest = hashlib.sha256(b"transferflow-folder-v1\n")
    for split in sorted(scan.files):
        for path, label in scan.files[split]:
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            relative = path.relative_to(scan.root).as_posix()
            digest.update(f"{split}\0{scan.class_names[label]}\0{relative}\0{content}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- decoding

def decode_images(paths: list[Path], image_size: int) -> np.ndarray:
    """Decode JPEG/PNG/BMP/GIF to RGB and resize to image_size x image_size, as uint8."""
    import tensorflow as tf

    def one(path: Path) -> np.ndarray:
        try:
            image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            raise DatasetError(f"image {path} is unreadable ({exc.message.splitlines()[0]}): "
                               "replace or delete the file") from None
        resized = tf.image.resize(image, (image_size, image_size), antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()

    out = np.empty((len(paths), image_size, image_size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        for i, image in enumerate(pool.map(one, paths)):
            out[i] = image
    return out


def resize_array(images: np.ndarray, image_size: int, batch: int = 1024) -> np.ndarray:
    if images.shape[1] == image_size and images.shape[2] == image_size:
        return images
    import tensorflow as tf

    parts = []
    for start in range(0, len(images), batch):
        resized = tf.image.resize(images[start:start + batch], (image_size, image_size), antialias=True)
        parts.append(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy())
    return np.concatenate(parts)


# ---------------------------------------------------------------- splitting

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


def complete_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], val_fraction: float,
                    test_fraction: float, seed: int, class_names: list[str]):
    """Carve the missing val/test splits out of train; report which were carved."""
    wanted = {name: share for name, share in (("val", val_fraction), ("test", test_fraction))
              if name not in splits}
    origin = {name: ("carved" if name in wanted else "given") for name in ("val", "test")}
    if not wanted:
        return splits, origin
    x, y = splits["train"]
    carved = carve_splits(y, wanted, seed, class_names)
    result = dict(splits)
    for name, indices in carved.items():
        result[name] = (x[indices], y[indices])
    return result, origin


# ---------------------------------------------------------------- the stage

@dataclass(frozen=True)
class PrepareOptions:
    image_size: int
    val_fraction: float
    test_fraction: float
    seed: int


def prepare_dataset(dataset: str, options: PrepareOptions, bucket: str | None = None,
                    logger=log) -> DatasetRef:
    """Check and prepare a dataset; store it under datasets/<name>/<fingerprint>/ in S3.

    Reuses the stored copy when the same data was prepared with the same options.
    """
    bucket = bucket or storage.bucket_name()
    shown = downloads.redact(dataset)  # a presigned URL's token never reaches logs or metadata
    kind, folder = locate(dataset, logger)
    if kind == "builtin":
        fingerprint, build = _builtin_source(dataset, options.image_size, logger)
    else:
        scan = scan_folder(folder, label=shown)
        if scan.ignored:
            logger.info("ignored %d files that are not images (%s)", scan.ignored, ", ".join(IMAGE_SUFFIXES))
        fingerprint = fingerprint_folder(scan)
        build = _folder_builder(scan, options.image_size, logger)
    prefix = f"datasets/{dataset_slug(dataset)}/{fingerprint[:16]}"
    variant = (f"{options.image_size}px-v{options.val_fraction}-t{options.test_fraction}"
               f"-s{options.seed}-f{PREPARED_FORMAT}")
    manifest_key = f"{prefix}/{variant}.json"
    cached = storage.get_json(bucket, manifest_key)
    if cached is not None:
        logger.info("dataset %s already prepared as s3://%s/%s", shown, bucket, manifest_key)
        return DatasetRef.model_validate(cached[0])
    class_names, given = build()
    splits, origin = complete_splits(given, options.val_fraction, options.test_fraction,
                                     options.seed, class_names)
    prepared = PreparedDataset(class_names, splits)
    ref = DatasetRef(name=dataset_slug(dataset), source=shown, fingerprint=fingerprint,
                     uri=f"s3://{bucket}/{prefix}/{variant}.npz",
                     class_names=class_names, image_size=options.image_size,
                     split_origin=origin, counts=prepared.counts())
    _store(prepared, ref, bucket, manifest_key)
    logger.info("prepared %s: %s", shown, _summary(ref))
    return ref


def _builtin_source(name: str, image_size: int, logger):
    builtin = BUILTINS[name]
    fingerprint = hashlib.sha256(f"builtin:{name}:{builtin.sha256}".encode()).hexdigest()

    def build():
        archive = storage.cache_dir() / "downloads" / name / builtin.url.rsplit("/", 1)[-1]
        downloads.download(builtin.url, archive, downloads.Checksum("sha256", builtin.sha256),
                           logger=logger)
        root = _extract_cached(archive, f"builtin-{name}", discard_on_failure=True)
        splits, class_names = builtin.reader(root)
        if any(x.shape[1] != image_size for x, _ in splits.values()):
            logger.info("resizing %s to %dpx", name, image_size)
        return class_names, {s: (resize_array(x, image_size), y) for s, (x, y) in splits.items()}

    return fingerprint, build


def _folder_builder(scan: FolderScan, image_size: int, logger):
    def build():
        total = sum(len(f) for f in scan.files.values())
        logger.info("decoding %d images in %d classes at %dpx", total, len(scan.class_names), image_size)
        splits = {}
        for split, files in scan.files.items():
            if files:
                images = decode_images([p for p, _ in files], image_size)
                splits[split] = (images, np.array([label for _, label in files], dtype=np.int32))
        return scan.class_names, splits
    return build


def _store(prepared: PreparedDataset, ref: DatasetRef, bucket: str, manifest_key: str) -> None:
    """Upload the arrays, then the manifest: a manifest always points at complete data."""
    target = storage.parse_s3_uri(ref.uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prepared.npz"
        prepared.save(path)
        storage.upload_file(path, target.bucket, target.key)
    storage.put_json(bucket, manifest_key, ref.model_dump())


def _summary(ref: DatasetRef) -> str:
    sizes = ", ".join(f"{s} {sum(c.values())}" for s, c in ref.counts.items())
    return f"{len(ref.class_names)} classes, {sizes} images; fingerprint {ref.fingerprint[:12]}"


def load_prepared(ref: DatasetRef) -> PreparedDataset:
    """Fetch the prepared arrays (cached locally by ETag) and load them."""
    return PreparedDataset.load(storage.cached_download(ref.uri))

