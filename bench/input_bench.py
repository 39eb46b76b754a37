"""Input pipeline speed: transferflow's image decoding against keras.utils.image_dataset_from_directory.

Writes folders of photo JPEGs in two size profiles: 320-512 px a side (like tf_flowers or
ImageNet) and 1200-2000 px (camera exports), uploads each to a local SeaweedFS started for
the run (or the S3 in AWS_ENDPOINT_URL), then:
(a) keras.utils.image_dataset_from_directory on the synced files: its float32 batches only
    counted ("batches"), and collected into one uint8 array ("array");
(b) transferflow's path: the folder synced from S3 (timed separately), scanned, then
    `decode_images` into one uint8 array (what the dataset stage stores).
All produce size x size RGB images of the same files; the ratios are (b) over each (a),
measured in the same run, for each target size.

    .venv/bin/python bench/input_bench.py [--images 600] [--large-images 120] [--sizes 32 224] [--repeat 3]
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


PROFILES = {"320-512 px": (320, 512), "1200-2000 px": (1200, 2000)}


def write_photos(root: Path, images: int, sides: tuple[int, int], classes: int = 5) -> None:
    """Smooth random colour fields with noise, JPEG-encoded at photo sizes (about 0.4 bytes a
    pixel at quality 90, like real photos: tf_flowers averages 62 KB for ~400x300)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for index in range(images):
        height, width = (int(rng.integers(sides[0], sides[1] + 1)) for _ in range(2))
        coarse = rng.integers(0, 256, (1, 6, 6, 3)).astype("float32")
        image = tf.image.resize(coarse, (height, width)).numpy()[0] + rng.normal(0, 12, (height, width, 3))
        folder = root / f"class_{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        data = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90).numpy()
        (folder / f"img_{index:05d}.jpg").write_bytes(data)


def keras_rate(folder: Path, size: int, keep: bool) -> float:
    """The Keras utility iterated to the end; with `keep`, its batches kept as one uint8 array
    (what transferflow's dataset stage produces and stores)."""
    import keras

    started = time.perf_counter()
    dataset = keras.utils.image_dataset_from_directory(folder, image_size=(size, size), batch_size=32,
                                                       shuffle=False, verbose=False)
    if keep:
        count = len(np.concatenate([np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)
                                    for x, _ in dataset]))
    else:
        count = sum(int(x.shape[0]) for x, _ in dataset)
    return count / (time.perf_counter() - started)


def transferflow_rate(folder: Path, size: int) -> float:
    from transferflow.data import decode_images, scan_folder

    started = time.perf_counter()
    scan = scan_folder(folder)
    decoded = decode_images([path for path, _ in scan.files["train"]], size)
    assert not decoded.bad
    return len(decoded.images) / (time.perf_counter() - started)


def synced_from_s3(source: Path, workdir: Path, name: str) -> tuple[Path, float]:
    """Upload the folder to S3, then time transferflow's sync of it into a fresh cache."""
    from transferflow import data, storage

    bucket = storage.ensure_bucket("input-bench")
    for path in sorted(source.rglob("*.jpg")):
        storage.upload_file(path, bucket, f"{name}/{path.relative_to(source).as_posix()}")
    os.environ["TRANSFERFLOW_CACHE_DIR"] = str(workdir / "cache")
    started = time.perf_counter()
    folder = data._fetch_s3(f"s3://{bucket}/{name}/", QUIET)
    return folder, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600, help="images of the 320-512 px profile")
    parser.add_argument("--large-images", type=int, default=120, help="images of the 1200-2000 px profile")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the median is kept")
    args = parser.parse_args()
    from transferflow.devstack import s3server

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = None
        if not os.environ.get("AWS_ENDPOINT_URL"):
            server = s3server.start(workdir / "s3")
            os.environ.update(server.env())
        try:
            print(f"{os.cpu_count()} CPU cores; median of {args.repeat} runs per cell; ratio = "
                  "transferflow / keras.utils.image_dataset_from_directory, same files, same run")
            print(f"{'':>19} {'keras img/s':>19} {'transferflow':>13} {'ratio vs keras':>22}")
            print(f"{'photos':>13} {'size':>5} {'batches':>9} {'array':>9} {'img/s':>13} {'batches':>12} "
                  f"{'array':>9}")
            counts = (args.images, args.large_images)
            for (profile, sides), count in zip(PROFILES.items(), counts, strict=True):
                name = f"photos-{sides[0]}"
                write_photos(workdir / name, count, sides)
                folder, sync_s = synced_from_s3(workdir / name, workdir, name)
                report(folder, profile, count, args, sync_s)
        finally:
            if server is not None:
                s3server.stop_process(server.process)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report(folder: Path, profile: str, count: int, args, sync_s: float) -> None:
    for size in args.sizes:
        batches = median([keras_rate(folder, size, keep=False) for _ in range(args.repeat)])
        array = median([keras_rate(folder, size, keep=True) for _ in range(args.repeat)])
        ours = median([transferflow_rate(folder, size) for _ in range(args.repeat)])
        print(f"{profile:>13} {size:>5} {batches:9.0f} {array:9.0f} {ours:13.0f} {ours / batches:11.2f}x "
              f"{ours / array:9.2f}x")
    print(f"{'':>13} ({count} JPEGs; their S3 sync took {sync_s:.1f}s, {count / sync_s:.0f} files/s, "
          "not in the rates)")


if __name__ == "__main__":
    main()
