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
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from transferflow import downloads, mirror, records, storage
from transferflow.builtins import BUILTINS, Folder
from transferflow.config import dataset_slug
from transferflow.errors import DatasetError
from transferflow.mirror import RemoteFile, RemoteSource

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
SPLITS = ("train", "val", "test")
MIN_TRAIN_PER_CLASS = 1
STREAMED_SUFFIX = "-tfrecord"
PREPARED_FORMAT = 2  # bump when the prepared layout changes, so old caches are not reused


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
    format: str = "npz"  # npz: one file, loaded into memory; tfrecord: shards, streamed
    shards: dict[str, list[str]] = {}  # tfrecord: split -> shard URIs


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
    data_root: Path | None = None  # root, or the single folder an archive wrapped everything in
    unreadable: list[Path] = field(default_factory=list)  # symlinks whose target is missing


# ---------------------------------------------------------------- locating sources

def remote_source(dataset: str) -> RemoteSource | None:
    """Built-ins and http(s) archives: sources read from outside object storage (and mirrored)."""
    if dataset in BUILTINS:
        files = BUILTINS[dataset].files
        return RemoteSource(identity=f"builtin:{dataset}:" + ",".join(f.sha256 for f in files), shown=dataset,
                            files=tuple(RemoteFile(f.url, downloads.Checksum("sha256", f.sha256))
                                        for f in files))
    if dataset.startswith(("http://", "https://")):
        base, checksum = downloads.Checksum.from_fragment(dataset)
        if not base.split("?", 1)[0].lower().endswith(ARCHIVE_SUFFIXES):
            raise DatasetError(f"{downloads.redact(base)} is not an archive URL (.tar.gz, .tgz, .tar, .zip)")
        pin = f"#{checksum.algorithm}={checksum.hexdigest}" if checksum else ""
        return RemoteSource(identity=downloads.redact(base) + pin, shown=downloads.redact(dataset),
                            files=(RemoteFile(base, checksum),))
    return None


def source_signature(dataset: str) -> str | None:
    """A cheap text that changes whenever the source's content may have: checksums for pinned
    sources, object ETags for s3://, file sizes and times for local paths. None when only a
    download can tell (an http(s) URL without #sha256=)."""
    remote = remote_source(dataset)
    if remote is not None:
        return remote.identity if remote.pinned else None
    digest = hashlib.sha256()
    if dataset.startswith("s3://"):
        location = storage.parse_s3_uri(dataset)
        for obj in storage.list_keys(location.bucket, location.key):
            digest.update(f"{obj['Key']}\0{obj['ETag']}\n".encode())
        return f"{dataset}#{digest.hexdigest()}"
    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.exists():
        return None
    for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if item.is_file():
            stat = item.stat()
            digest.update(f"{item.relative_to(path) if path.is_dir() else ''}\0{stat.st_size}\0"
                          f"{stat.st_mtime_ns}\n".encode())
    return f"{path.resolve()}#{digest.hexdigest()}"


def local_folder(dataset: str, logger=log) -> Path:
    """The local folder holding an s3:// or local dataset's images (synced or extracted)."""
    if dataset.startswith("s3://"):
        return _fetch_s3(dataset, logger)
    path = Path(dataset.removeprefix("file://")).expanduser()
    if not path.exists():
        known = ", ".join(sorted(BUILTINS))
        raise DatasetError(
            f"dataset {dataset!r} does not exist: pass a folder with one subfolder per class, "
            f"an archive, s3://bucket/prefix/, an http(s) URL, or a built-in ({known})")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise DatasetError(f"dataset {dataset!r} is a file but not an archive "
                               "(.tar.gz, .tgz, .tar, .zip)")
        return _extract_cached(path, hashlib.sha256(str(path.resolve()).encode()).hexdigest())
    return path


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
        scan = _scan(root)
    except DatasetError as exc:
        if label is None:
            raise
        raise DatasetError(str(exc).replace(str(root), label)) from None
    if scan.unreadable:
        names = [path.relative_to(root).as_posix() for path in scan.unreadable]
        log.warning("dataset %s: skipped %d unreadable files (symlinks whose target is missing): %s%s",
                    label or root, len(names), ", ".join(names[:5]),
                    f" and {len(names) - 5} more" if len(names) > 5 else "")
    return scan


def _scan(root: Path) -> FolderScan:
    data_root = _single_top_folder(root)
    split_dirs = {s: data_root / s for s in SPLITS if (data_root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise DatasetError(f"dataset {data_root} has {', '.join(split_dirs)}/ but no train/ folder")
    split_dirs = split_dirs or {"train": data_root}
    class_names = _class_dirs(split_dirs["train"])
    if not class_names:
        raise DatasetError(f"dataset {root} is empty: it needs one subfolder per class with images in it")
    files: dict[str, list[tuple[Path, int]]] = {}
    ignored, unreadable = 0, []
    for split, folder in split_dirs.items():
        extra = sorted(set(_class_dirs(folder)) - set(class_names))
        if extra:
            raise DatasetError(f"dataset {root}: {split}/ has classes {extra} that train/ lacks; "
                               "every class must have training images")
        files[split], skipped, broken = _image_files(folder, class_names)
        ignored += skipped
        unreadable += broken
    _check_classes(root, class_names, files["train"])
    return FolderScan(root, class_names, files, ignored, data_root, unreadable)


def _single_top_folder(root: Path) -> Path:
    """Archives often wrap everything in one folder (flowers/daisy/..., shapes/train/...): look
    inside it, for class folders and train/ val/ test/ alike."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.name not in IGNORED_DIRS]
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].name in SPLITS:
        return root
    inner = entries[0]
    if any((inner / s).is_dir() for s in SPLITS) or len(_class_dirs(inner)) > 1:
        return inner
    return root


IGNORED_DIRS = frozenset({"__MACOSX"})  # resource forks that macOS Finder puts in zips


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_DIRS)


def _image_files(folder: Path, class_names: list[str]) -> tuple[list[tuple[Path, int]], int, list[Path]]:
    """Images per class, the number of other files, and the links that point nowhere."""
    found, ignored, broken = [], 0, []
    for label, name in enumerate(class_names):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.rglob("*")):
            if path.name.startswith(".") or path.name.endswith(".etag"):
                continue
            if path.is_symlink() and not path.exists():
                broken.append(path)
            elif not path.is_file():
                continue
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((path, label))
            else:
                ignored += 1
    return found, ignored, broken


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
    """Content hash of the file list and bytes: same images, same fingerprint, whether they
    come as a folder, in an archive (with or without a wrapping folder) or from S3."""
    digest = hashlib.sha256(b"transferflow-folder-v1\n")
    for split in sorted(scan.files):
        for path, label in scan.files[split]:
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            relative = path.relative_to(scan.data_root or scan.root).as_posix()
            digest.update(f"{split}\0{scan.class_names[label]}\0{relative}\0{content}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- decoding

@dataclass
class Decoded:
    """Decoded images, and the positions (in the input list) of files that could not be decoded."""

    images: np.ndarray  # uint8 (N - len(bad), size, size, 3), in input order
    bad: list[int]


def decode_images(paths: list[Path], image_size: int) -> Decoded:
    """Decode JPEG/PNG/BMP/GIF to RGB (grayscale and alpha converted) at image_size x image_size.

    A parallel tf.data pipeline. JPEGs are decoded at 1/2, 1/4 or 1/8 scale when the image is
    that much larger than the target (libjpeg's DCT scaling skips most of the work); the
    scale is read from each file's header up front, so every group of files runs one fixed
    decode op. Resizes antialias only when they still shrink by 2x or more. Corrupt or
    truncated files are skipped and reported, not fatal: the caller decides how many it
    tolerates.
    """
    import tensorflow as tf

    groups: dict[tuple, list[int]] = {}
    for index, path in enumerate(paths):
        groups.setdefault(_decode_plan(path, image_size), []).append(index)
    decoded = None
    for plan, indices in sorted(groups.items(), key=lambda item: str(item[0])):
        names = [str(paths[i]) for i in indices]
        part = tf.data.Dataset.from_tensor_slices((np.array(indices, np.int64), names))
        part = part.map(lambda i, name, plan=plan: (i, _decode_resize(tf.io.read_file(name), image_size,
                                                                      *plan)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
        decoded = part if decoded is None else decoded.concatenate(part)
    indices, batches = [], []
    if decoded is not None:
        for index, images in decoded.batch(64).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
            indices.append(index)
            batches.append(images)
    if not batches:
        return Decoded(np.zeros((0, image_size, image_size, 3), np.uint8), list(range(len(paths))))
    found = np.concatenate(indices)
    images = np.concatenate(batches)[np.argsort(found, kind="stable")]  # back in input order
    return Decoded(images=images, bad=sorted(set(range(len(paths))) - set(found.tolist())))


def _decode_plan(path: Path, size: int) -> tuple[int, bool | None]:
    """(JPEG DCT scale, antialias) for a file: scale 0 means "not a readable JPEG header: decode
    generically"; antialias None means "decide from the decoded size"."""
    shape = jpeg_shape(path)
    if shape is None:
        return 0, None
    smallest = min(shape)
    ratio = next((r for r in (8, 4, 2) if smallest >= size * r), 1)
    return ratio, smallest / ratio >= 2 * size


def jpeg_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from a JPEG's SOF header, reading only the markers before it."""
    try:
        with open(path, "rb") as handle:
            if handle.read(2) != b"\xff\xd8":
                return None
            while True:
                marker = handle.read(2)
                if len(marker) < 2 or marker[0] != 0xFF:
                    return None
                length = int.from_bytes(handle.read(2), "big")
                if marker[1] in SOF_MARKERS:
                    header = handle.read(5)
                    return int.from_bytes(header[1:3], "big"), int.from_bytes(header[3:5], "big")
                if length < 2:
                    return None
                handle.seek(length - 2, os.SEEK_CUR)
    except OSError:
        return None


SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def image_shape(path: Path) -> tuple[int, int] | None:
    """(height, width) from an image file's header (JPEG, PNG, GIF, BMP), without decoding it."""
    shape = jpeg_shape(path)
    if shape is not None:
        return shape
    try:
        with open(path, "rb") as handle:
            head = handle.read(26)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big")
    if head.startswith((b"GIF87a", b"GIF89a")) and len(head) >= 10:
        return int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little")
    if head.startswith(b"BM") and len(head) >= 26:
        return (abs(int.from_bytes(head[22:26], "little", signed=True)),
                int.from_bytes(head[18:22], "little", signed=True))
    return None


SIZE_SAMPLE = 500  # image headers read to choose image_size "auto"


def auto_image_size(shorter_sides: list[int], low: int, high: int) -> int:
    """image_size "auto": the median image's shorter side, rounded to a multiple of 32 (the
    backbones downsample by 32, so other sizes waste border pixels), within [low, high].

    Upscaling small images adds no detail and costs compute; downscaling far below the photos
    throws away what pretrained filters need. `high` is the backbone's native size: above it
    the cost grows quadratically for little gain. Without readable headers: `high`.
    """
    if not shorter_sides:
        return high
    median = float(np.median(shorter_sides))
    return int(min(high, max(low, 32 * max(1, round(median / 32)))))


def _decode_resize(contents, size: int, ratio: int, antialias: bool | None):
    import tensorflow as tf

    if ratio:  # fast integer IDCT and plain chroma upsampling: invisible once scaled down
        fast = dict(dct_method="INTEGER_FAST", fancy_upscaling=False) if ratio > 1 else {}
        image = tf.io.decode_jpeg(contents, channels=3, ratio=ratio, **fast)
    else:
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    if antialias is None:
        shrink = tf.cast(tf.reduce_min(tf.shape(image)[:2]), tf.float32) / size
        resized = tf.cond(shrink >= 2.0, lambda: tf.image.resize(image, (size, size), antialias=True),
                          lambda: tf.image.resize(image, (size, size)))
    else:
        resized = tf.image.resize(image, (size, size), antialias=antialias)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


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


# ---------------------------------------------------------------- the stage

@dataclass(frozen=True)
class PrepareOptions:
    image_size: int | str  # pixels, or "auto": chosen from the images within auto_bounds
    val_fraction: float
    test_fraction: float
    seed: int
    max_bad_fraction: float = 0.01  # corrupt images tolerated (skipped) before the stage fails
    stream_threshold_mb: int = 2048  # above this decoded size: sharded TFRecord, streamed
    auto_bounds: tuple[int, int] = (32, 224)  # the backbone's minimum and native input size


@dataclass
class Source:
    """A dataset's images before decoding: how to plan its splits at a size, and the shorter
    sides of (a sample of) its images, for image_size "auto"."""

    plan: Callable[[int], tuple[list[str], dict[str, Items]]]  # size -> (class names, split items)
    sizes: Callable[[], list[int]]


def prepare_dataset(dataset: str, options: PrepareOptions, bucket: str | None = None,
                    logger=log) -> DatasetRef:
    """Check and prepare a dataset; store it under datasets/<name>/<fingerprint>/ in S3.

    Remote sources (built-ins, http(s) archives) are read from their mirror in object storage
    when one exists, and mirrored after their first download. The prepared copy is reused
    when the same data was prepared with the same options.
    """
    bucket = bucket or storage.bucket_name()
    shown = downloads.redact(dataset)  # a presigned URL's token never reaches logs or metadata
    remote = remote_source(dataset)
    entry = mirror.lookup(bucket, remote, logger) if remote else None
    if entry is not None and (ref := _stored(bucket, dataset, entry["fingerprint"], options, logger)):
        return ref  # the origin was not contacted, nothing was downloaded
    if remote is not None:
        if entry is not None:
            paths, origins = mirror.fetch(bucket, entry, logger), []
        else:
            paths, origins = mirror.download(remote, logger)
        fingerprint, source = _remote_builder(dataset, remote, paths, logger)
    else:
        scan = scan_folder(local_folder(dataset, logger), label=shown)
        if scan.ignored:
            logger.info("ignored %d files that are not images (%s)", scan.ignored, ", ".join(IMAGE_SUFFIXES))
        fingerprint, source = fingerprint_folder(scan), _folder_source(scan)
    ref = _stored(bucket, dataset, fingerprint, options, logger) or _prepare(
        dataset, fingerprint, source, options, bucket, logger)
    if remote is not None and entry is None:
        mirror.publish(bucket, remote, dataset_slug(dataset), fingerprint, paths, origins, logger)
    return ref


def _keys(dataset: str, fingerprint: str, options: PrepareOptions) -> tuple[str, str]:
    prefix = f"datasets/{dataset_slug(dataset)}/{fingerprint[:16]}"
    size = (f"{options.image_size}px" if options.image_size != "auto"
            else "auto{}-{}px".format(*options.auto_bounds))
    variant = f"{size}-v{options.val_fraction}-t{options.test_fraction}-s{options.seed}-f{PREPARED_FORMAT}"
    return prefix, variant


def _stored(bucket: str, dataset: str, fingerprint: str, options: PrepareOptions,
            logger) -> DatasetRef | None:
    """The prepared copy of these data with these options, if one is stored in the format the
    threshold asks for (a dataset prepared in memory is prepared again as shards, and back)."""
    prefix, variant = _keys(dataset, fingerprint, options)
    for streamed in (False, True):
        cached = storage.get_json(bucket, f"{prefix}/{variant}{STREAMED_SUFFIX * streamed}.json")
        if cached is None:
            continue
        ref = DatasetRef.model_validate(cached[0])
        if _should_stream(_total(ref), ref.image_size, options) == streamed:
            logger.info("dataset %s already prepared as %s", downloads.redact(dataset), ref.uri)
            return ref
    return None


def _total(ref: DatasetRef) -> int:
    return sum(sum(counts.values()) for counts in ref.counts.values())


def _should_stream(images: int, image_size: int, options: PrepareOptions) -> bool:
    return records.estimated_bytes(images, image_size) > options.stream_threshold_mb * 2**20


def _prepare(dataset: str, fingerprint: str, source: Source, options: PrepareOptions, bucket: str,
             logger) -> DatasetRef:
    """Choose the size if "auto", then prepare at it (or find it prepared); an "auto" manifest
    is also written so that the next "auto" run finds the copy without reading the images."""
    if options.image_size != "auto":
        return _prepare_at(dataset, fingerprint, source, options, bucket, logger)
    sizes = source.sizes()
    size = auto_image_size(sizes, *options.auto_bounds)
    logger.info("image size auto: %d px (median shorter side %s px of %d images read, within the "
                "backbone's %d-%d px)", size, f"{np.median(sizes):.0f}" if sizes else "unknown",
                len(sizes), *options.auto_bounds)
    sized = replace(options, image_size=size)
    ref = _stored(bucket, dataset, fingerprint, sized, logger) or _prepare_at(
        dataset, fingerprint, source, sized, bucket, logger)
    prefix, variant = _keys(dataset, fingerprint, options)
    storage.put_json(bucket, f"{prefix}/{variant}{STREAMED_SUFFIX * (ref.format == 'tfrecord')}.json",
                     ref.model_dump())
    return ref


def _prepare_at(dataset: str, fingerprint: str, source: Source, options: PrepareOptions, bucket: str,
                logger) -> DatasetRef:
    """Decode, resize and store the splits: one .npz when small, TFRecord shards when not."""
    prefix, variant = _keys(dataset, fingerprint, options)
    class_names, given = source.plan(options.image_size)
    splits, origin = complete_splits(given, options.val_fraction, options.test_fraction,
                                     options.seed, class_names)
    total = sum(len(items.labels) for items in splits.values())
    stream = _should_stream(total, options.image_size, options)
    variant += STREAMED_SUFFIX * stream
    ref = DatasetRef(name=dataset_slug(dataset), source=downloads.redact(dataset), fingerprint=fingerprint,
                     uri=f"s3://{bucket}/{prefix}/{variant}" + ("/" if stream else ".npz"),
                     class_names=class_names, image_size=options.image_size, split_origin=origin,
                     counts={}, format="tfrecord" if stream else "npz")
    logger.info("decoding %d images in %d classes at %dpx%s", total, len(class_names), options.image_size,
                " (streamed to sharded TFRecord: above stream_threshold_mb)" if stream else "")
    started = time.monotonic()
    bad = Bad()
    ref = (_write_stream if stream else _write_npz)(ref, splits, bad, bucket, logger)
    elapsed = max(time.monotonic() - started, 1e-6)
    logger.info("decoded %d images in %.1fs (%.0f images/s)", total - len(bad.names), elapsed,
                (total - len(bad.names)) / elapsed)
    try:
        bad.check(total, options.max_bad_fraction, ref.source, logger)
        _check_every_class_trains(ref)
    except DatasetError:
        location = storage.parse_s3_uri(ref.uri)
        storage.delete_prefix(location.bucket, location.key)  # shards never had a manifest: unseen
        raise
    storage.put_json(bucket, f"{prefix}/{variant}.json", ref.model_dump())  # last: data is complete
    logger.info("prepared %s: %s", ref.source, _summary(ref))
    return ref


def _check_every_class_trains(ref: DatasetRef) -> None:
    """After corrupt images were skipped, every class must still have training images."""
    empty = [name for name in ref.class_names if not ref.counts.get("train", {}).get(name)]
    if empty:
        raise DatasetError(f"dataset {ref.source}: class folders {empty} have no readable training images "
                           "(all were corrupt); replace the images or remove the folders")
    missing = {split: [n for n in ref.class_names if not counts.get(n)]
               for split, counts in ref.counts.items() if split != "train"}
    for split, names in missing.items():
        if names:
            log.warning("%s: the %s split has no readable images of %s", ref.source, split, names)


@dataclass
class Bad:
    """Images that failed to decode, by name."""

    names: list[str] = field(default_factory=list)

    def add(self, items: Items, decoded: Decoded, positions: np.ndarray) -> np.ndarray:
        """Record the failures of one load; returns the labels of the images that did decode."""
        self.names += [items.name(int(positions[i])) for i in decoded.bad]
        return np.delete(items.labels[positions], decoded.bad)

    def check(self, total: int, limit: float, source: str, logger) -> None:
        """Skip a few corrupt files with a count in the log; fail when more than `limit` are bad."""
        if not self.names:
            return
        shown, more = self.names[:5], f" and {len(self.names) - 5} more" if len(self.names) > 5 else ""
        if len(self.names) > limit * total:
            raise DatasetError(
                f"dataset {source}: {len(self.names)} of {total} images ({len(self.names) / total:.1%}) "
                f"are corrupt or unreadable, above the limit of {limit:.1%}: {', '.join(shown)}{more}. "
                "Replace or delete them, or raise max_bad_image_fraction.")
        logger.warning("skipped %d corrupt or unreadable images of %d: %s%s", len(self.names), total,
                       ", ".join(shown), more)


def _write_npz(ref: DatasetRef, splits: dict[str, Items], bad: Bad, bucket: str, logger) -> DatasetRef:
    arrays = {}
    for split, items in splits.items():
        positions = np.arange(len(items.labels))
        decoded = items.load(positions)
        arrays[split] = (decoded.images, bad.add(items, decoded, positions))
    prepared = PreparedDataset(ref.class_names, arrays)
    target = storage.parse_s3_uri(ref.uri)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prepared.npz"
        prepared.save(path)
        storage.upload_file(path, target.bucket, target.key)
    return ref.model_copy(update={"counts": prepared.counts()})


def _write_stream(ref: DatasetRef, splits: dict[str, Items], bad: Bad, bucket: str, logger) -> DatasetRef:
    """Decode chunk by chunk into shards: memory holds one chunk, whatever the dataset's size."""
    prefix = storage.parse_s3_uri(ref.uri).key.rstrip("/")
    shards, counts = {}, {}
    for split, items in splits.items():
        def chunks(items=items):
            chunk = records.chunk_images(ref.image_size)
            for positions in records.chunked(np.arange(len(items.labels)), chunk):
                decoded = items.load(positions)
                yield decoded.images, bad.add(items, decoded, positions)

        shards[split], labels = records.write_split(chunks(), bucket, prefix, split, logger)
        counts[split] = _class_counts(labels, ref.class_names)
    return ref.model_copy(update={"counts": counts, "shards": shards})


def _class_counts(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    return {class_names[k]: int(v) for k, v in sorted(Counter(labels.tolist()).items())}


def _remote_builder(dataset: str, remote: RemoteSource, paths: list[Path], logger) -> tuple[str, Source]:
    """Fingerprint and source for downloaded (or mirrored) files of a built-in or archive URL."""
    extracted: list[Path] = []

    def extract(archive: Path) -> Path:
        extracted.append(_extract_cached(archive, storage.sha256_file(archive)[:16], discard_on_failure=True))
        return extracted[-1]

    if dataset not in BUILTINS:
        scan = scan_folder(extract(paths[0]), label=remote.shown)
        return fingerprint_folder(scan), _folder_source(scan)
    # A built-in's content is pinned by its checksums: they are its fingerprint.
    fingerprint = hashlib.sha256(remote.identity.encode()).hexdigest()
    read: list = []  # the built-in's data, read once for sizes and plan alike

    def data():
        if not read:
            try:
                found = BUILTINS[dataset].read(paths, extract)
            except DatasetError:  # damaged files: the next run must fetch and unpack them afresh
                for path in [*paths, *extracted]:
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
                raise
            read.append(_folder_source(scan_folder(found.root, label=dataset))
                        if isinstance(found, Folder) else found)
        return read[0]

    def plan(size: int):
        arrays = data()
        if isinstance(arrays, Source):
            return arrays.plan(size)
        if any(x.shape[1] != size for x, _ in arrays.splits.values()):
            logger.info("resizing %s to %dpx", dataset, size)
        return arrays.class_names, {split: _array_items(x, y, size)
                                    for split, (x, y) in arrays.splits.items()}

    def sizes():
        arrays = data()
        if isinstance(arrays, Source):
            return arrays.sizes()
        return [x.shape[1] for x, _ in arrays.splits.values()]

    return fingerprint, Source(plan, sizes)


def _array_items(x: np.ndarray, y: np.ndarray, image_size: int) -> Items:
    return Items(y.astype(np.int32), lambda p: Decoded(resize_array(x[p], image_size), []),
                 lambda i: f"image {i}")


def _folder_source(scan: FolderScan) -> Source:
    """The folder's splits as file lists and labels: nothing is decoded yet."""
    def plan(size: int):
        splits = {}
        for split, files in scan.files.items():
            if files:
                paths = [p for p, _ in files]
                splits[split] = Items(
                    np.array([label for _, label in files], dtype=np.int32),
                    lambda positions, paths=paths: decode_images([paths[i] for i in positions], size),
                    lambda i, paths=paths: paths[i].relative_to(scan.root).as_posix())
        return scan.class_names, splits

    def sizes():
        files = [path for split in scan.files.values() for path, _ in split]
        sample = files[::max(1, len(files) // SIZE_SAMPLE)]
        return [min(shape) for path in sample if (shape := image_shape(path))]

    return Source(plan, sizes)


def _summary(ref: DatasetRef) -> str:
    sizes = ", ".join(f"{s} {sum(c.values())}" for s, c in ref.counts.items())
    return f"{len(ref.class_names)} classes, {sizes} images; fingerprint {ref.fingerprint[:12]}"


def ref_for(prepared_uri: str) -> DatasetRef:
    """The manifest of a prepared dataset, from the URI recorded in a model's metadata."""
    location = storage.parse_s3_uri(prepared_uri.rstrip("/").removesuffix(".npz") + ".json")
    found = storage.get_json(location.bucket, location.key)
    if found is None:
        raise DatasetError(f"prepared dataset {prepared_uri} has no manifest at {location.uri}: it was "
                           "deleted; re-run the dataset stage to prepare it again")
    return DatasetRef.model_validate(found[0])


def load_prepared(ref: DatasetRef) -> PreparedDataset:
    """The prepared splits: arrays in memory (npz), or streams over cached shards (tfrecord)."""
    if ref.format == "tfrecord":
        location = storage.parse_s3_uri(ref.uri)
        prefix = location.key.rstrip("/")
        return PreparedDataset(ref.class_names, {
            split: records.StreamSplit(uris, records.read_labels(location.bucket, prefix, split),
                                       ref.image_size)
            for split, uris in ref.shards.items()})
    return PreparedDataset.load(storage.cached_download(ref.uri))

