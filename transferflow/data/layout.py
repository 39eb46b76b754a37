"""Folder layout: one subfolder per class, optionally under train/, val/ and test/;
the image files found, their classes, and the folder's fingerprint."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from transferflow.errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
SPLITS = ("train", "val", "test")
MIN_TRAIN_PER_CLASS = 1
IGNORED_DIRS = frozenset({"__MACOSX"})  # resource forks that macOS Finder puts in zips


@dataclass
class FolderScan:
    """Image files found in a folder tree, per split, with class indices."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)]
    ignored: int
    data_root: Path | None = None  # root, or the single folder an archive wrapped everything in
    unreadable: list[Path] = field(default_factory=list)  # symlinks whose target is missing
    digests: dict[str, list[str]] | None = None  # split -> sha256 of each file's bytes (file_digests)


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


def file_digests(scan: FolderScan) -> dict[str, list[str]]:
    """The sha256 of every file's bytes, per split in scan order: read once, then kept on the scan
    (they are the fingerprint's input and what each image's split is drawn from)."""
    if scan.digests is None:
        scan.digests = {split: [hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in files]
                        for split, files in scan.files.items()}
    return scan.digests


def fingerprint_folder(scan: FolderScan) -> str:
    """Content hash of the file list and bytes: same images, same fingerprint, whether they
    come as a folder, in an archive (with or without a wrapping folder) or from S3."""
    digest = hashlib.sha256(b"transferflow-folder-v1\n")
    digests = file_digests(scan)
    for split in sorted(scan.files):
        for (path, label), content in zip(scan.files[split], digests[split], strict=True):
            relative = path.relative_to(scan.data_root or scan.root).as_posix()
            digest.update(f"{split}\0{scan.class_names[label]}\0{relative}\0{content}\n".encode())
    return digest.hexdigest()
