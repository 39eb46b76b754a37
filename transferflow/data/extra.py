"""Extra labelled images beside a dataset (`--extra-data`), typically the inputs a person labelled
under feedback/<name>/labeled/<class>/ after `transferflow serve --capture-*` stored them.

They join the dataset's training pool before val and test are carved, so they are split like every
other image: some land in val and test, and the next version is judged on them too. Their content
is part of the prepared dataset's fingerprint, so labelling more images gives a new prepared copy.
When the dataset brings its own val/ and test/ folders nothing is carved, and the extra images
all train. Their classes must be the dataset's (a subset is fine).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferflow.data import downloads
from transferflow.data.decode import Decoded, decode_images
from transferflow.data.layout import IMAGE_SUFFIXES
from transferflow.data.sources import local_folder
from transferflow.data.splits import Items
from transferflow.errors import DatasetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extra:
    """The extra images found: (path, class name) pairs, and their content fingerprint."""

    source: str  # as given, credentials redacted
    root: Path
    files: tuple[tuple[Path, str], ...]
    fingerprint: str
    digests: tuple[str, ...] = ()  # each file's sha256 (hex): what its split is drawn from

    def describe(self) -> dict:
        return {"source": self.source, "fingerprint": self.fingerprint, "images": len(self.files)}


def find_extra(uri: str, logger=log) -> Extra:
    """The images of an s3:// prefix or local folder laid out as <class>/<image>: one class is
    enough (unlike a dataset), and nested folders inside a class are read too."""
    shown = downloads.redact(uri)
    root = local_folder(uri, logger)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = tuple((path, folder.name) for folder in folders for path in sorted(folder.rglob("*"))
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
                  and not path.name.startswith("."))
    if not files:
        raise DatasetError(f"extra data {shown} holds no images in class folders (<class>/<image>.jpg); "
                           "label some first (feedback/NAME/labeled/<class>/), or leave --extra-data out")
    digest, contents = hashlib.sha256(b"transferflow-extra-v1\n"), []
    for path, label in files:
        relative = path.relative_to(root).as_posix()
        contents.append(hashlib.sha256(path.read_bytes()).hexdigest())
        digest.update(f"{label}\0{relative}\0{contents[-1]}\n".encode())
    logger.info("extra data %s: %d images in %d classes", shown, len(files),
                len({label for _, label in files}))
    return Extra(shown, root, files, digest.hexdigest(), tuple(contents))


def joined_fingerprint(fingerprint: str, extra: Extra | None) -> str:
    """The prepared dataset's fingerprint: the dataset's alone, or with its extra images."""
    if extra is None:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}+extra:{extra.fingerprint}".encode()).hexdigest()


def extra_items(extra: Extra, class_names: list[str], image_size: int) -> Items:
    unknown = sorted({label for _, label in extra.files} - set(class_names))
    if unknown:
        raise DatasetError(f"extra data {extra.source} has classes {unknown} that the dataset does not (it "
                           f"has {class_names}): move those images into one of its class folders, or drop "
                           "them")
    paths = [path for path, _ in extra.files]
    labels = np.array([class_names.index(label) for _, label in extra.files], np.int32)
    return Items(labels, lambda positions: decode_images([paths[i] for i in positions], image_size),
                 lambda i: f"{extra.source} {paths[i].relative_to(extra.root).as_posix()}",
                 np.array(extra.digests, dtype=object))


def with_extra_train(splits: dict[str, Items], extra: Extra, class_names: list[str], image_size: int) -> dict:
    """The splits with the extra images appended to train (before val and test are carved from it)."""
    return {**splits, "train": concatenated(splits["train"], extra_items(extra, class_names, image_size))}


def concatenated(first: Items, second: Items) -> Items:
    """Two item lists as one: positions past the first's end are the second's."""
    size = len(first.labels)

    def load(positions) -> Decoded:
        positions = np.asarray(positions, np.int64)
        mine, theirs = np.flatnonzero(positions < size), np.flatnonzero(positions >= size)
        a, b = first.load(positions[mine]), second.load(positions[theirs] - size)
        kept = np.concatenate([np.delete(mine, a.bad), np.delete(theirs, b.bad)])
        images = np.concatenate([a.images, b.images])[np.argsort(kept, kind="stable")]
        return Decoded(images, sorted([int(mine[i]) for i in a.bad] + [int(theirs[i]) for i in b.bad]))

    def name(i: int) -> str:
        return first.name(i) if i < size else second.name(i - size)

    digests = (None if first.digests is None or second.digests is None
               else np.concatenate([first.digests, second.digests]))
    return Items(np.concatenate([first.labels, second.labels]), load, name, digests)


def source_with(source, extra: Extra):
    """A prepare.Source whose plan appends the extra images to its train split."""
    from dataclasses import replace

    def plan(size: int):
        class_names, splits = source.plan(size)
        return class_names, with_extra_train(splits, extra, class_names, size)

    return replace(source, plan=plan, extra=extra.describe())
