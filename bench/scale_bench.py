"""Scale-out (engine ray): data preparation and training images/s with 1 and 2 Ray workers on this
machine, and a model of what N nodes would give.

Measured, against a SeaweedFS and a 2-node local Ray cluster (1 CPU each) that the bench starts:
- preparation: generated photos (JPEG and PNG) decoded and resized by the dataset stage, in this
  process (engine local) and as a Ray Data job with 1 and 2 workers, each into a fresh bucket so
  nothing is reused. Images/s over the whole stage (listing, hashing, decoding, shards, manifest).
- training: the fine-tuning phase (VGG16's top block unfrozen, random He weights, 32 px, batch 32
  per replica) in this process and under TensorflowTrainer with 1 and 2 workers. Images/s at the
  steady state (the median epoch from the second on, from the chief's epoch times), and the whole
  phase's wall time (worker start-up, TensorFlow imports, S3 checkpoints and staging included).

Honest about this machine: its 2 "nodes" share 2 CPU cores (and every other process on it), and
one TensorFlow process already uses both cores, so a second worker cannot add compute here: the
ratio shows the cost of the all-reduce and the fixed start-up, not scaling. The model below says
what N real nodes would give, from the rates measured here in process (a node = this machine) and
the stated assumptions; change them with the flags.

    .venv/bin/python bench/scale_bench.py [--images 600] [--photo-size 256] [--epochs 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EPOCH_LINE = re.compile(r"fine_tune epoch (\d+)/\d+ \(([\d.]+)s\)")
QUIET = logging.getLogger("bench")
QUIET.setLevel(logging.WARNING)


class EpochTimes(logging.Handler):
    """Collects the fine-tuning phase's epoch times from its log (relayed from the chief on Ray)."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[int, float] = {}

    def emit(self, record):
        found = EPOCH_LINE.match(record.getMessage())
        if found:
            self.seconds[int(found[1])] = float(found[2])


def config(args, dataset: Path, weights: Path, **overrides):
    from transferflow.config import RetrainConfig

    return RetrainConfig(dataset=str(dataset), backbone="vgg16", weights=str(weights), image_size=32,
                         batch_size=32, head_epochs=2, fine_tune_epochs=args.epochs, fine_tune_blocks=1,
                         patience=100, calibrate=False, **overrides)


def in_fresh_bucket(function):
    """Run `function` with TRANSFERFLOW_BUCKET set to a new bucket, so no stored result is reused."""
    from transferflow import storage

    bucket = f"scale-{uuid.uuid4().hex[:10]}"
    storage.ensure_bucket(bucket)
    previous, os.environ["TRANSFERFLOW_BUCKET"] = os.environ["TRANSFERFLOW_BUCKET"], bucket
    try:
        return function()
    finally:
        os.environ["TRANSFERFLOW_BUCKET"] = previous


def measure_preparation(args, photos: Path, weights: Path, engine: str, workers: int) -> dict:
    """The dataset stage on the photos at 32 px: images/s over the whole stage."""
    from transferflow.pipeline import phases

    settings = config(args, photos, weights, engine=engine, num_workers=workers, stream_threshold_mb=0)
    started = time.perf_counter()
    ref = in_fresh_bucket(lambda: phases.download_dataset(settings, QUIET))
    seconds = time.perf_counter() - started
    images = sum(sum(per_class.values()) for per_class in ref.counts.values())
    return {"images": images, "seconds": seconds, "rate": images / seconds}


def measure_training(args, dataset, backbone, head, engine: str, workers: int, settings) -> dict:
    """The fine-tuning phase: steady-state images/s (median epoch from the 2nd on) and wall time."""
    from transferflow.pipeline import phases

    run = settings.model_copy(update={"engine": engine, "num_workers": workers})
    logger, times = logging.getLogger(f"bench.train.{engine}{workers}"), EpochTimes()
    logger.addHandler(times)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    started = time.perf_counter()
    phases.fine_tune(run, dataset, head, f"bench-{engine}-{workers}", logger=logger)
    seconds = time.perf_counter() - started
    images = sum(dataset.counts["train"].values())
    steady = statistics.median([s for epoch, s in times.seconds.items() if epoch > 1] or [seconds])
    return {"rate": images / steady, "seconds": seconds, "epoch_s": steady}


def projection(nodes: int, a, decode_per_node: float, train_per_node: float, size: int) -> dict:
    """What `nodes` nodes would give (images/s), and what limits it.

    Preparation: every node decodes at `decode_per_node` until S3 cannot deliver the source files.
    Training (data parallel): a step is a node's compute on its batch plus a ring all-reduce of the
    gradients (2 (N-1)/N of them through each node's network). Sharding by element means every node
    reads every prepared image: once from S3 into its local cache (the download column), then from
    its disk each epoch, parsing N times what it trains on."""
    prep_s3 = a.s3_mb_s * 1e6 / (a.source_kb * 1e3)
    prep = min(nodes * decode_per_node, prep_s3)
    allreduce_s = 2 * (nodes - 1) / nodes * a.gradient_mb * 1e6 / (a.network_gbit * 1e9 / 8)
    step_rate = nodes * a.batch / (a.batch / train_per_node + allreduce_s)
    prepared = size * size * 3  # bytes of one decoded image
    disk_rate = a.disk_mb_s * 1e6 / prepared
    download_s = a.dataset_images * prepared / min(a.network_gbit * 1e9 / 8, a.s3_mb_s * 1e6 / nodes)
    train_limit = "compute + all-reduce" if step_rate <= disk_rate else "local disk (every node reads all)"
    return {"nodes": nodes, "prep": prep, "prep_limit": "decode" if prep < prep_s3 else "S3",
            "train": min(step_rate, disk_rate), "train_limit": train_limit,
            "efficiency": step_rate / (nodes * train_per_node), "download_s": download_s}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="generated photos (3 classes)")
    parser.add_argument("--photo-size", type=int, default=256, help="their side in pixels")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per measurement")
    model = parser.add_argument_group("the N-node model's assumptions")
    model.add_argument("--network-gbit", type=float, default=10.0, help="each node's network (Gbit/s)")
    model.add_argument("--s3-mb-s", type=float, default=2000.0, help="aggregate S3 read throughput (MB/s)")
    model.add_argument("--source-kb", type=float, default=110.0, help="a source JPEG (ImageNet's mean)")
    model.add_argument("--disk-mb-s", type=float, default=1000.0, help="a node's local disk reads (MB/s)")
    model.add_argument("--dataset-images", type=int, default=1_281_167, help="images (ImageNet's train)")
    model.add_argument("--batch", type=int, default=32, help="images per replica per step")
    model.add_argument("--gradient-mb", type=float, default=28.3,
                       help="all-reduced per step: VGG16 block5's 7.08 M float32 weights")
    model.add_argument("--gpu-node-rate", type=float, default=600.0,
                       help="ASSUMED (not measured here) training img/s of one GPU node on VGG16's top "
                       "block at 224 px, for the second table; bench/gpu_check.py measures a GPU")
    model.add_argument("--gpu-node-decode", type=float, default=5800.0,
                       help="decoding img/s of that node: 16 cores at 362 img/s each, bench/input_bench.py's "
                       "rate for 320-512 px JPEGs to 224 px (725 img/s on 2 cores, README)")
    model.add_argument("--nodes", default="1,2,4,8,16,32")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        work = Path(tmp)
        server, cluster = start_services(work)
        try:
            results = measure(args, work)
        finally:
            cluster.shutdown()
            from transferflow.devstack import s3server

            s3server.stop_process(server.process)
    report(args, *results)


def start_services(work: Path):
    """A SeaweedFS and a 2-node Ray cluster (1 CPU per node, like tests/scaleout's)."""
    from ray.cluster_utils import Cluster

    from transferflow import storage
    from transferflow.devstack import s3server

    server = s3server.start(work / "s3")
    os.environ.update({**server.env(), "TRANSFERFLOW_BUCKET": "scale-bench",
                       "TRANSFERFLOW_CACHE_DIR": str(work / "cache")})
    storage.ensure_bucket("scale-bench")
    node = {"num_cpus": 1, "object_store_memory": 256 << 20}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address
    return server, cluster


def measure(args, work: Path):
    from transferflow.devstack.samples import write_dataset, write_random_weights
    from transferflow.pipeline import phases

    photos = write_dataset(work / "photos", classes=3, per_class=args.images // 3, size=args.photo_size)
    weights = write_random_weights(work / "vgg16.weights.h5")
    prep = {label: measure_preparation(args, photos, weights, engine, workers)
            for label, engine, workers in (("local", "local", 1), ("ray 1 worker", "ray", 1),
                                           ("ray 2 workers", "ray", 2))}
    settings = config(args, photos, weights)  # in memory: the first streamed epoch's tracing is not timed
    dataset = phases.download_dataset(settings, QUIET)
    backbone = phases.build_backbone(settings, dataset, QUIET)
    head = phases.train_head(settings, dataset, backbone, "bench-head", QUIET)
    train = {label: measure_training(args, dataset, backbone, head, engine, workers, settings)
             for label, engine, workers in (("local", "local", 1), ("ray 1 worker", "ray", 1),
                                            ("ray 2 workers", "ray", 2))}
    return prep, train, sum(dataset.counts["train"].values())


def report(args, prep: dict, train: dict, train_images: int) -> None:
    print(f"{args.images} generated photos of {args.photo_size} px -> 32 px; fine-tuning VGG16 block5 on "
          f"{train_images} of them, {args.epochs} epochs, batch 32 per replica; {os.cpu_count()} CPU cores; "
          "Ray: 2 nodes x 1 CPU")
    print("\n| measured here | preparation img/s | stage s | training img/s (steady) | epoch s | phase s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label in prep:
        p, t = prep[label], train[label]
        print(f"| {label} | {p['rate']:.0f} | {p['seconds']:.1f} | {t['rate']:.0f} | {t['epoch_s']:.2f} | "
              f"{t['seconds']:.1f} |")
    one, two = "ray 1 worker", "ray 2 workers"
    print(f"\nratio 2 workers / 1 worker: preparation {prep[two]['rate'] / prep[one]['rate']:.2f}x, "
          f"training {train[two]['rate'] / train[one]['rate']:.2f}x (2 shared cores: no scaling here)")
    print_model(args, prep["local"]["rate"], train["local"]["rate"])


def print_model(args, decode: float, rate: float) -> None:
    print(f"\nModel of N nodes. Assumptions: {args.network_gbit:g} Gbit/s per node, S3 {args.s3_mb_s:g} MB/s "
          f"in all, local disk {args.disk_mb_s:g} MB/s, source JPEG {args.source_kb:g} KB, "
          f"{args.gradient_mb:g} MB all-reduced per step (ring), batch {args.batch} per replica, sharding "
          f"by element, a dataset of {args.dataset_images} images")
    print(f"\n(a) nodes like this machine (2 cores), as measured in process: decoding {decode:.0f} img/s, "
          f"training {rate:.0f} img/s each at 32 px")
    model_table(args, decode, rate, 32)
    print(f"\n(b) GPU nodes at 224 px, ASSUMED (not measured here): decoding {args.gpu_node_decode:g} img/s, "
          f"training {args.gpu_node_rate:g} img/s each")
    model_table(args, args.gpu_node_decode, args.gpu_node_rate, 224)


def model_table(args, decode: float, rate: float, size: int) -> None:
    print("\n| nodes | preparation img/s | limited by | training img/s | limited by | all-reduce "
          "efficiency | first download per node |")
    print("|---:|---:|---|---:|---|---:|---:|")
    for nodes in (int(n) for n in args.nodes.split(",")):
        m = projection(nodes, args, decode, rate, size)
        print(f"| {nodes} | {m['prep']:.0f} | {m['prep_limit']} | {m['train']:.0f} | {m['train_limit']} | "
              f"{m['efficiency']:.2f} | {m['download_s'] / 60:.0f} min |")


if __name__ == "__main__":
    main()
