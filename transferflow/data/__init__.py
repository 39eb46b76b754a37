"""The dataset stage, one way down: source -> fetch or mirror -> extract -> decode -> split ->
store.

    sources    where a dataset's files are: local, s3://, or a remote source to fetch or mirror
    layout     the class folders, the image files found, the folder's fingerprint
    decode     decoding and resizing images; image sizes from headers (image_size "auto")
    splits     train/val/test carving (by each image's content digest) and per-class counts
    membership the sidecar listing every prepared image's name, class, digest and split
    store      the prepared copy in S3 (DatasetRef manifest, npz or TFRecord shards) and loading it
    leakage    exact and near duplicates between train and test, found while the images are written
    prepare    the stage itself: prepare_dataset
Beside them: builtins (the built-in datasets), downloads, mirror, records (TFRecord shards), catalog
(what `transferflow datasets` lists: prepared copies, their membership).

Sources: a built-in name (cifar10), an http(s) archive URL (optional #sha256=... fragment),
s3://bucket/prefix/ (folder or archive), or a local folder / archive / file:// URI.
"""

from transferflow.data.decode import (
    Decoded,
    auto_image_size,
    decode_images,
    image_shape,
    jpeg_shape,
    resize_array,
)
from transferflow.data.layout import (
    ARCHIVE_SUFFIXES,
    IMAGE_SUFFIXES,
    SPLITS,
    FolderScan,
    file_digests,
    fingerprint_folder,
    scan_folder,
)
from transferflow.data.leakage import NEAR_BITS, LeakageReport, check_leakage, image_hashes
from transferflow.data.membership import Membership, MembershipRef, read_membership
from transferflow.data.prepare import PrepareOptions, Source, prepare_dataset
from transferflow.data.sources import local_folder, remote_source, safe_join, source_signature
from transferflow.data.splits import Items, carve_splits, class_counts, complete_splits
from transferflow.data.store import PREPARED_FORMAT, DatasetRef, PreparedDataset, load_prepared, ref_for

__all__ = [
    "ARCHIVE_SUFFIXES", "IMAGE_SUFFIXES", "NEAR_BITS", "PREPARED_FORMAT", "SPLITS", "DatasetRef",
    "Decoded", "FolderScan", "Items", "LeakageReport", "Membership", "MembershipRef", "PrepareOptions",
    "PreparedDataset", "Source", "auto_image_size", "carve_splits", "check_leakage", "class_counts",
    "complete_splits", "decode_images", "file_digests", "fingerprint_folder", "image_hashes",
    "image_shape", "jpeg_shape", "load_prepared", "local_folder", "prepare_dataset", "read_membership",
    "ref_for", "remote_source", "resize_array", "safe_join", "scan_folder", "source_signature",
]
