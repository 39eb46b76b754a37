"""Memory of the streamed (TFRecord) path against the in-memory path, at 1x and 10x the images.

Each measurement runs in a fresh process: prepare a generated dataset (decode, resize, store
in S3), then read one shuffled training epoch through the same tf.data input the trainer
uses. It prints the peak resident memory of each, and the 10x/1x ratios: the streamed path
should stay flat, the in-memory path grows with the data. A local SeaweedFS is started for
the run unless AWS_ENDPOINT_URL is set.

    .venv/bin/python bench/stream_bench.py [--images 1500] [--image-size 96]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from transferflow import storage
from transferflow.data import PrepareOptions, load_prepared, prepare_dataset
storage.ensure_bucket()
from transferflow.training.fit import split_dataset
folder, size, threshold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ref = prepare_dataset(folder, PrepareOptions(size, 0.1, 0.1, 0, stream_threshold_mb=threshold))
data = load_prepared(ref)
seen = sum(int(y.shape[0]) for _, y in split_dataset(data.splits["train"], 64, True, 0))
print(json.dumps({"format": ref.format, "images": seen,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_folder(root: Path, images: int) -> None:
    """Random-noise PNGs (incompressible, so the decoded size is what it says)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class_{index % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        (folder / f"{index:06d}.png").write_bytes(tf.io.encode_png(pixels).numpy())


def measure(folder: Path, size: int, threshold: int, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(size), str(threshold)],
                            capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"measurement failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="the 1x dataset; 10x is ten times this")
    parser.add_argument("--image-size", type=int, default=96)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from transferflow.devstack import s3server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = None if os.environ.get("AWS_ENDPOINT_URL") else s3server.start(work / "s3")
        env = {**os.environ, **(server.env() if server else {}), "TRANSFERFLOW_BUCKET": "stream-bench",
               "TRANSFERFLOW_CACHE_DIR": str(work / "cache")}
        try:
            rows = {}
            for scale in (1, 10):
                folder = work / f"x{scale}"
                write_folder(folder, args.images * scale)
                rows[scale] = {"streamed": measure(folder, args.image_size, 0, env),
                               "in memory": measure(folder, args.image_size, 10**6, env)}
        finally:
            if server is not None:
                s3server.stop_process(server.process)
    report(rows, args)


def report(rows: dict, args) -> None:
    decoded_mb = args.images * args.image_size ** 2 * 3 / 2**20
    print(f"1x = {args.images} images at {args.image_size} px ({decoded_mb:.0f} MB decoded), "
          f"10x = {10 * args.images}; peak resident memory of a process that prepares the dataset "
          "and reads one shuffled training epoch")
    print(f"{'path':10} {'1x MB':>8} {'10x MB':>8} {'10x/1x':>7}")
    for path in ("streamed", "in memory"):
        small, large = rows[1][path]["peak_mb"], rows[10][path]["peak_mb"]
        print(f"{path:10} {small:8.0f} {large:8.0f} {large / small:6.2f}x")


if __name__ == "__main__":
    main()
