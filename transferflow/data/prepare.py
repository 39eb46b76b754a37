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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from transferflow import storage
from transferflow.config import dataset_slug
from transferflow.data import downloads, mirror, records
from transferflow.data.builtins import BUILTINS, Folder
from transferflow.data.decode import (
    SIZE_SAMPLE,
    Decoded,
    auto_image_size,
    decode_images,
    image_shape,
    resize_array,
)
from transferflow.data.extra import find_extra, joined_fingerprint, source_with
from transferflow.data.layout import IMAGE_SUFFIXES, FolderScan, file_digests, fingerprint_folder, scan_folder
from transferflow.data.mirror import RemoteSource
from transferflow.data.sources import extract_cached, local_folder, remote_source
from transferflow.data.splits import Items, complete_splits
from transferflow.data.store import (
    PREPARED_FORMAT,
    STREAMED_SUFFIX,
    Bad,
    DatasetRef,
    split_sizes,
    total_images,
    write_npz,
    write_stream,
)
from transferflow.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOptions:
    image_size: int | str  # pixels, or "auto": chosen from the images within auto_bounds
    val_fraction: float
    test_fraction: float
    seed: int
    max_bad_fraction: float = 0.01  # corrupt images tolerated (skipped) before the stage fails
    stream_threshold_mb: int = 2048  # above this decoded size: sharded TFRecord, streamed
    auto_bounds: tuple[int, int] = (32, 224)  # the backbone's minimum and native input size
    # (splits, image size) -> the same splits whose loaders decode elsewhere (engine ray, see
    # transferflow.scaleout.prepare); they must give what the local loaders give, in the same order
    decoder: Callable[[dict[str, Items], int], dict[str, Items]] | None = field(default=None, compare=False)
    extra_data: str | None = None  # more labelled images joining the train pool (transferflow.data.extra)


@dataclass
class Source:
    """A dataset's images before decoding: how to plan its splits at a size, and the shorter
    sides of (a sample of) its images, for image_size "auto"."""

    plan: Callable[[int], tuple[list[str], dict[str, Items]]]  # size -> (class names, split items)
    sizes: Callable[[], list[int]]
    extra: dict | None = None  # the --extra-data images its plan adds to train (data.extra.Extra.describe)


def prepare_dataset(dataset: str, options: PrepareOptions, bucket: str | None = None,
                    logger=log) -> DatasetRef:
    """Check and prepare a dataset; store it under datasets/<name>/<fingerprint>/ in S3.

    Remote sources (built-ins, http(s) archives) are read from their mirror in object storage
    when one exists, and mirrored after their first download. The prepared copy is reused
    when the same data was prepared with the same options.
    """
    bucket = bucket or storage.bucket_name()
    shown = downloads.redact(dataset)  # a presigned URL's token never reaches logs or metadata
    extra = find_extra(options.extra_data, logger) if options.extra_data else None
    remote = remote_source(dataset)
    entry = mirror.lookup(bucket, remote, logger) if remote else None
    if entry is not None and (ref := _stored(bucket, dataset, joined_fingerprint(entry["fingerprint"], extra),
                                             options, logger)):
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
    prepared = joined_fingerprint(fingerprint, extra)
    source = source_with(source, extra) if extra else source
    ref = _stored(bucket, dataset, prepared, options, logger) or _prepare(
        dataset, prepared, source, options, bucket, logger)
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
        if _should_stream(total_images(ref.counts), ref.image_size, options) == streamed:
            logger.info("dataset %s already prepared as %s", downloads.redact(dataset), ref.uri)
            return ref
    return None


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
    if options.decoder is not None:
        splits = options.decoder(splits, options.image_size)
    total = sum(len(items.labels) for items in splits.values())
    stream = _should_stream(total, options.image_size, options)
    variant += STREAMED_SUFFIX * stream
    ref = DatasetRef(name=dataset_slug(dataset), source=downloads.redact(dataset), fingerprint=fingerprint,
                     uri=f"s3://{bucket}/{prefix}/{variant}" + ("/" if stream else ".npz"),
                     class_names=class_names, image_size=options.image_size, split_origin=origin,
                     counts={}, format="tfrecord" if stream else "npz",
                     extra=source.extra,
                     created=datetime.now(UTC).isoformat(timespec="microseconds"))
    logger.info("decoding %d images in %d classes at %dpx%s", total, len(class_names), options.image_size,
                " (streamed to sharded TFRecord: above stream_threshold_mb)" if stream else "")
    started = time.monotonic()
    bad = Bad()
    ref = write_stream(ref, splits, bad, bucket, logger) if stream else write_npz(ref, splits, bad)
    elapsed = max(time.monotonic() - started, 1e-6)
    logger.info("decoded %d images in %.1fs (%.0f images/s)", total - len(bad.names), elapsed,
                (total - len(bad.names)) / elapsed)
    try:
        bad.check(total, options.max_bad_fraction, ref.source, logger)
        _check_every_class_trains(ref)
    except DatasetError:
        for uri in (ref.uri, *([ref.membership.uri] if ref.membership else [])):
            location = storage.parse_s3_uri(uri)
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


def _remote_builder(dataset: str, remote: RemoteSource, paths: list[Path], logger) -> tuple[str, Source]:
    """Fingerprint and source for downloaded (or mirrored) files of a built-in or archive URL."""
    extracted: list[Path] = []

    def extract(archive: Path) -> Path:
        extracted.append(extract_cached(archive, storage.sha256_file(archive)[:16], discard_on_failure=True))
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
        digests = {split: array_digests(x) for split, (x, _) in arrays.splits.items()}
        return arrays.class_names, {split: _array_items(x, y, size, split, digests[split])
                                    for split, (x, y) in arrays.splits.items()}

    def sizes():
        arrays = data()
        if isinstance(arrays, Source):
            return arrays.sizes()
        return [x.shape[1] for x, _ in arrays.splits.values()]

    return fingerprint, Source(plan, sizes)


def array_digests(x: np.ndarray) -> np.ndarray:
    """The sha256 of each image's raw uint8 array at its native size: a built-in's content digest,
    the same whatever size it is prepared at."""
    return np.array([hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in x],
                    dtype=object)


def _array_items(x: np.ndarray, y: np.ndarray, image_size: int, split: str, digests: np.ndarray) -> Items:
    return Items(y.astype(np.int32), lambda p: Decoded(resize_array(x[p], image_size), []),
                 lambda i: f"{split}/{i}", digests)


def _folder_source(scan: FolderScan) -> Source:
    """The folder's splits as file lists and labels: nothing is decoded yet."""
    def plan(size: int):
        splits, digests = {}, file_digests(scan)
        for split, files in scan.files.items():
            if files:
                paths = [p for p, _ in files]
                splits[split] = Items(
                    np.array([label for _, label in files], dtype=np.int32),
                    lambda positions, paths=paths: decode_images([paths[i] for i in positions], size),
                    lambda i, paths=paths: paths[i].relative_to(scan.root).as_posix(),
                    np.array(digests[split], dtype=object))
        return scan.class_names, splits

    def sizes():
        files = [path for split in scan.files.values() for path, _ in split]
        sample = files[::max(1, len(files) // SIZE_SAMPLE)]
        return [min(shape) for path in sample if (shape := image_shape(path))]

    return Source(plan, sizes)


def _summary(ref: DatasetRef) -> str:
    return (f"{len(ref.class_names)} classes, {split_sizes(ref.counts)} images; "
            f"fingerprint {ref.fingerprint[:12]}")
