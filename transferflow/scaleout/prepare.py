"""Dataset preparation on Ray (engine ray): the local stage runs as it is, and only the decoding
and resizing of the images runs as a Ray Data job across the cluster.

Why the result is the local one, byte for byte and in the same order:
- the plan is the local plan: prepare_dataset lists the files, fingerprints them and carves the
  splits itself, then hands the splits to `RayDecoder`, which only swaps each split's loader;
- a Ray worker calls the very loader the local path calls (`Items.load`, shipped by cloudpickle:
  decode_images over the same files at the same size, or resize_array for a built-in's arrays);
- the job's output is keyed by (split, first position) and handed to the writer range by range as
  it asks, so nothing is placed by the order in which workers finish;
- the writer, the bad-image count and cap, the leakage hashes and the manifest (written last) are
  the local code.
With engine ray the prepared copy is always the streamed format (sharded TFRecord, what
stream_threshold_mb 0 gives locally): shards suit data large enough to need a cluster, and the
in-memory format would hold the whole dataset in the driver.

Where the files must be: a worker reads the image files at the paths the driver sees, so every
Ray node must see TRANSFERFLOW_CACHE_DIR (and a local dataset's folder) at the same path: one
machine, or a shared volume (deployments/ray/raycluster.yaml mounts one). A node that does not is
refused by name, rather than its images being counted as corrupt.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from transferflow import localcache
from transferflow.data import records
from transferflow.data.decode import Decoded
from transferflow.data.prepare import PrepareOptions, prepare_dataset
from transferflow.data.sources import remote_source
from transferflow.data.splits import Items
from transferflow.data.store import DatasetRef
from transferflow.errors import DatasetError, TransferflowError
from transferflow.scaleout.cluster import Session, actors_for, raise_unwrapped

log = logging.getLogger(__name__)

MIN_PIECE = 16  # images per Ray task at least: each task costs a few milliseconds more
PIECES_PER_WORKER = 4  # per split, so that one slow node does not hold the others up


def prepare_on_ray(dataset: str, options: PrepareOptions, num_workers: int, bucket: str | None = None,
                   logger=log) -> DatasetRef:
    """prepare_dataset with the decoding on the cluster, always in the streamed format. The cluster
    is reached only if something must be decoded: a stored copy is returned without it."""
    with Session(logger) as session:
        decoder = RayDecoder(session, num_workers, shared_roots(dataset), os.getcwd(), logger)
        return prepare_dataset(dataset, replace(options, stream_threshold_mb=0, decoder=decoder), bucket,
                               logger)


def shared_roots(dataset: str) -> list[str]:
    """The folders every Ray node must see at the driver's path: the cache (downloads, synced
    s3:// prefixes, extracted archives) and a local dataset folder."""
    roots = [str(localcache.cache_dir().resolve())]
    path = Path(dataset.removeprefix("file://")).expanduser()
    if remote_source(dataset) is None and not dataset.startswith("s3://") and path.is_dir():
        roots.append(str(path.resolve()))
    return roots


@dataclass(frozen=True)
class Piece:
    """The positions [start, stop) of one split that one Ray task decodes."""

    split: str
    start: int
    stop: int


def plan_pieces(splits: dict[str, Items], image_size: int, num_workers: int) -> list[Piece]:
    """Every split cut into tasks, in the order the writer asks for them. Pieces never cross the
    writer's chunks (records.chunk_images), so each chunk it asks for is a run of whole pieces;
    small splits are cut finer so that every worker gets some."""
    chunk = records.chunk_images(image_size)
    pieces = []
    for split, items in splits.items():
        total = len(items.labels)
        size = max(MIN_PIECE, min(chunk, -(-total // (PIECES_PER_WORKER * num_workers))))
        for first in range(0, total, chunk):
            last = min(total, first + chunk)
            pieces += [Piece(split, start, min(start + size, last)) for start in range(first, last, size)]
    return pieces


@dataclass(frozen=True, eq=False)
class RayDecoder:
    """PrepareOptions.decoder for engine ray: each split keeps its labels and names, and takes its
    images from a Ray Data job (started when the writer asks for the first images)."""

    session: Session
    num_workers: int
    roots: list[str]  # folders every node must see (shared_roots)
    cwd: str  # the driver's working directory: a relative dataset path means the same there
    logger: logging.Logger | logging.LoggerAdapter = log

    def __call__(self, splits: dict[str, Items], image_size: int) -> dict[str, Items]:
        job = DecodeJob(self, splits, image_size)
        return {split: replace(items, load=functools.partial(job.take, split))  # names, digests kept
                for split, items in splits.items()}


class DecodeJob:
    """The Ray Data job that decodes every piece, and its results handed out by range."""

    def __init__(self, decoder: RayDecoder, splits: dict[str, Items], image_size: int):
        self.decoder, self.splits, self.image_size = decoder, splits, image_size
        self.pieces = plan_pieces(splits, image_size, decoder.num_workers)
        self.lengths = {(p.split, p.start): p.stop - p.start for p in self.pieces}
        self.batches = None  # the job's output, once started
        self.partial: dict[tuple[str, int], list[dict]] = {}
        self.done: dict[tuple[str, int], Decoded] = {}

    def take(self, split: str, positions: np.ndarray) -> Decoded:
        """The images at `positions` of `split` (a contiguous range, as the writers ask), joined
        from the pieces that cover it; failures by index into `positions`, as local loaders give."""
        size = self.image_size
        if not len(positions):
            return Decoded(np.zeros((0, size, size, 3), np.uint8), [])
        start, stop = int(positions[0]), int(positions[-1]) + 1
        covering = [p for p in self.pieces if p.split == split and start <= p.start < stop]
        if (not np.array_equal(positions, np.arange(start, stop))
                or sum(p.stop - p.start for p in covering) != stop - start):
            raise TransferflowError(f"internal: the writer asked {split} for positions {start}..{stop} "
                                    "that are not whole Ray pieces; prepare with engine local")
        parts = [(p.start - start, self._piece(p)) for p in covering]
        images = np.concatenate([decoded.images for _, decoded in parts])
        return Decoded(images, [offset + index for offset, decoded in parts for index in decoded.bad])

    def _piece(self, piece: Piece) -> Decoded:
        key = (piece.split, piece.start)
        while key not in self.done:
            self._pull()
        return self.done.pop(key)

    def _pull(self) -> None:
        """Read the job's next output batch, completing the pieces it finishes."""
        if self.batches is None:
            self.batches = self._start()
        try:
            batch = next(self.batches)
        except StopIteration:
            raise TransferflowError("internal: the Ray decode job ended before every piece came back; "
                                    "prepare with engine local and report it") from None
        except Exception as exc:  # a worker's DatasetError arrives wrapped by Ray
            raise_unwrapped(exc)
        for split, start in sorted({(str(s), int(b)) for s, b in zip(batch["split"], batch["start"],
                                                                     strict=True)}):
            rows = (batch["split"] == split) & (batch["start"] == start)
            parts = self.partial.setdefault((split, start), [])
            parts.append({name: batch[name][rows] for name in ("index", "ok", "image")})
            if sum(len(part["index"]) for part in parts) == self.lengths[(split, start)]:
                self.done[(split, start)] = _assembled(self.partial.pop((split, start)))

    def _start(self):
        """Submit the job: one input row per piece, decoded by an actor per worker (TensorFlow is
        imported once per actor), output kept in input order so the driver buffers little."""
        self.decoder.session.connect()
        import ray.data

        rows = [{"split": p.split, "start": p.start, "stop": p.stop} for p in self.pieces]
        workers = actors_for(self.decoder.num_workers, len(rows))
        loaders = {split: items.load for split, items in self.splits.items()}
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            DecodePieces, batch_size=1, batch_format="numpy", num_cpus=1,
            fn_constructor_kwargs={"loaders": loaders, "image_size": self.image_size,
                                   "roots": self.decoder.roots, "cwd": self.decoder.cwd},
            compute=ray.data.ActorPoolStrategy(size=workers))
        ds.context.execution_options.preserve_order = True
        self.decoder.logger.info("decoding %d images on Ray: %d tasks on %d workers",
                                 sum(self.lengths.values()), len(rows), workers)
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        self.decoder.session.closers.append(batches.close)  # ends the job before the connection
        return batches


def _assembled(parts: list[dict]) -> Decoded:
    """A piece's rows (possibly split over output batches) as the loader's Decoded."""
    index = np.concatenate([part["index"] for part in parts])
    order = np.argsort(index, kind="stable")
    ok = np.concatenate([part["ok"] for part in parts])[order]
    images = np.concatenate([part["image"] for part in parts])[order]
    return Decoded(np.ascontiguousarray(images[ok]), np.flatnonzero(~ok).tolist())


class DecodePieces:
    """The Ray Data UDF: decodes pieces with the local loaders; one row per image, a failed image
    marked (ok False, zero pixels) at its place."""

    def __init__(self, loaders: dict, image_size: int, roots: list[str], cwd: str):
        self.loaders, self.image_size, self.roots, self.cwd = loaders, image_size, roots, cwd

    def __call__(self, batch: dict) -> dict:
        self._check_node()
        outputs = [self._piece(str(split), int(start), int(stop))
                   for split, start, stop in zip(batch["split"], batch["start"], batch["stop"], strict=True)]
        return {name: np.concatenate([output[name] for output in outputs]) for name in outputs[0]}

    def _piece(self, split: str, start: int, stop: int) -> dict:
        count, size = stop - start, self.image_size
        decoded = self.loaders[split](np.arange(start, stop))
        ok = np.ones(count, bool)
        ok[decoded.bad] = False
        images = np.zeros((count, size, size, 3), np.uint8)
        images[ok] = decoded.images
        return {"split": np.full(count, split), "start": np.full(count, start, np.int64),
                "index": np.arange(count), "ok": ok, "image": images}

    def _check_node(self) -> None:
        """Refuse a node that cannot see the dataset's files: its images would read as corrupt."""
        missing = [root for root in self.roots if not Path(root).is_dir()]
        if missing:
            raise DatasetError(
                f"Ray node {socket.gethostname()} does not see {', '.join(missing)}: engine ray decodes "
                "images at the paths the driver sees. Mount the same folders (TRANSFERFLOW_CACHE_DIR, "
                "and a local dataset) at the same paths on every node, or pass engine local")
        if os.getcwd() != self.cwd and Path(self.cwd).is_dir():
            os.chdir(self.cwd)  # an actor is a process of its own: relative paths mean the driver's
