"""Image size on small photos: what `--image-size auto` chooses, and what other sizes would give.

Data: ../shared/datasets/sign-language-digits (2,062 real photos, 100x100, 10 classes), downscaled
here to --small px (default 32: CIFAR-sized photos; antialiased, PNG), and the same photos at their
own size. Weights: real pretrained VGG16 conv weights (../shared/tools/pretrained_vgg16.py).
Every row runs `transferflow train` as a user would, all flags at their defaults but the size, on the
dataset's own split (val 10% / test 10% carved by transferflow: 208 test photos, one photo = 0.48
points). Accuracy is read from the registry; time is the whole process, start to exit.

    .venv/bin/python bench/size_bench.py [--small 32] [--sizes auto,32,64,96] [--own auto]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_bench import DATASET, ROOT, ensure_weights, run_transferflow  # noqa: E402


def downscale(source: Path, target: Path, size: int) -> int:
    """Every photo resized to size x size (antialiased, as a camera's thumbnail would be), as PNG."""
    import numpy as np
    import tensorflow as tf

    count = 0
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir()):
            image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
            small = tf.image.resize(image, (size, size), antialias=True)
            pixels = tf.cast(np.clip(np.round(small.numpy()), 0, 255), tf.uint8)
            (target / folder.name / f"{path.stem}.png").write_bytes(tf.io.encode_png(pixels).numpy())
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=32, help="the size the photos are downscaled to")
    parser.add_argument("--sizes", default="auto,32,64,96",
                        help="--image-size values to train the downscaled photos at")
    parser.add_argument("--own", default="auto", help="--image-size values for the photos at their own size "
                        "(empty: none)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from transferflow.devstack import s3server

    weights = ensure_weights()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small = work / f"sign-digits-{args.small}px"
        photos = downscale(DATASET, small, args.small)
        server = s3server.start(work / "s3")
        env = {**os.environ, **server.env(), "TRANSFERFLOW_BUCKET": "size-bench",
               "TRANSFERFLOW_CACHE_DIR": str(work / "cache"), "PREFECT_HOME": str(work / "prefect")}
        plan = [(f"{args.small} px photos", small, size) for size in args.sizes.split(",") if size] + [
            ("own size (100 px)", DATASET, size) for size in args.own.split(",") if size]
        print(f"{'photos':20} {'--image-size':>12} {'trained at':>10} {'test acc':>8} {'seconds':>8}",
              flush=True)
        try:
            for index, (label, folder, size) in enumerate(plan):
                flags = [] if size == "auto" else ["--image-size", size]
                ours = run_transferflow(folder, weights, f"size-{index}", flags, args.seed, env,
                                        work / f"size-{index}.log")
                rows.append((label, size, ours))
                print(f"{label:20} {size:>12} {ours['image_size']:>8} px {ours['accuracy']:8.2%} "
                      f"{ours['seconds']:8.0f}", flush=True)
        finally:
            s3server.stop_process(server.process)
    print(f"\n{photos} photos, 10 classes, VGG16 with real pretrained weights, every other flag at its "
          f"default, seed {args.seed}, {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
