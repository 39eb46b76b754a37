"""Input pipeline speed: transferflow's image decoding against keras.utils.image_dataset_from_directory.

Writes a folder of photo-sized JPEGs (default 600 images, 320-512 px a side, like tf_flowers),
uploads it to a local SeaweedFS started for the run (or the S3 in AWS_ENDPOINT_URL), then:
(a) keras.utils.image_dataset_from_directory on the synced files, iterated to the end;
(b) transferflow's path: the folder synced from S3 (timed separately), then `decode_images`.
Both produce size x size RGB images of the same files; the ratio is (b) over (a), measured in
the same run, for each target size.

    .venv/bin/python bench/input_bench.py [--images 600] [--sizes 32 224] [--repeat 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

QUIET = logging.getLogger("bench")
QUIET.setLevel(logging.WARNING)


def write_photos(root: Path, images: int, classes: int = 5) -> None:
    """Smooth random colour fields with noise, JPEG-encoded at photo sizes."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for index in range(images):
        height, width = int(rng.integers(320, 513)), int(rng.integers(320, 513))
        coarse = rng.integers(0, 256, (1, 6, 6, 3)).astype("float32")
        image = tf.image.resize(coarse, (height, width)).numpy()[0] + rng.normal(0, 12, (height, width, 3))
        folder = root / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        data = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()
        (folder / f"img_{index:05d}.jpg").write_bytes(data)


def keras_rate(folder: Path, size: int) -> float:
    import keras

    started = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=(size, size), batch_size=32,
                                                       shuffle=False, verbose=False)
    count = sum(int(x.shape[0]) for x, _ in dataset)
    return count / (time.perf_counter() - started)


def transferflow_rate(folder: Path, size: int) -> float:
    from transferflow.data import decode_images, scan_folder

    started = time.perf_counter()
    scan = scan_folder(folder)
    decoded = decode_images([path for path, _ in scan.files["train"]], size)
    assert not decoded.bad
    return len(decoded.images) / (time.perf_counter() - started)


def synced_from_s3(source: Path, workdir: Path) -> tuple[Path, float]:
    """Upload the folder to S3, then time transferflow's sync of it into a fresh cache."""
    from transferflow import data, storage

    bucket = storage.ensure_bucket("input-bench")
    for path in sorted(source.rglob("*.jpg")):
        storage.upload_file(path, bucket, f"photos/{path.relative_to(source).as_posix()}")
    uri = f"s3://{bucket}/photos/"
    os.environ["TRANSFERFLOW_CACHE_DIR"] = str(workdir / "cache")
    started = time.perf_counter()
    folder = data._fetch_s3(uri, QUIET)
    return folder, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--repeat", type=int, default=2, help="runs per side; the best is kept")
    args = parser.parse_args()
    from transferflow import s3server

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = None
        if not os.environ.get("AWS_ENDPOINT_URL"):
            server = s3server.start(workdir / "s3")
            os.environ.update(server.env())
        try:
            write_photos(workdir / "photos", args.images)
            folder, sync_s = synced_from_s3(workdir / "photos", workdir)
            report(folder, args, sync_s)
        finally:
            if server is not None:
                s3server.stop_process(server.process)


def report(folder: Path, args, sync_s: float) -> None:
    print(f"{args.images} JPEGs of 320-512 px, {os.cpu_count()} CPU cores; S3 sync of the folder "
          f"{sync_s:.1f}s ({args.images / sync_s:.0f} files/s, not in the rates below)")
    print(f"{'size':>5} {'keras img/s':>12} {'transferflow img/s':>19} {'ratio':>6}")
    for size in args.sizes:
        keras_best = max(keras_rate(folder, size) for _ in range(args.repeat))
        ours_best = max(transferflow_rate(folder, size) for _ in range(args.repeat))
        print(f"{size:>5} {keras_best:12.0f} {ours_best:19.0f} {ours_best / keras_best:5.2f}x")


if __name__ == "__main__":
    main()
