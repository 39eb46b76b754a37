"""Fine-tuning epochs: end to end on the images against the top on cached activations, interleaved.

Real photos (../shared/datasets/sign-language-digits, its first 70% per class as train and the
next 10% as val) at --size px, real pretrained VGG16 weights, the top --blocks blocks unfrozen,
batch 32, Adam, validation every epoch: what `transferflow train` fine-tunes, without Prefect or
S3, so that only the epochs are timed. The two ways alternate epoch by epoch (after one warm-up
epoch each), so that a machine whose load changes over the run slows both alike; the ratio is
the median of the per-round ratios. CPU seconds (this process's, all threads) are printed too: on a
machine shared with other work they change far less than wall time does. The one-off cost of the
activations (the bottom's pass over train + val) is printed too: transferflow pays it in the head
phase's feature pass anyway.

    .venv/bin/python bench/fine_tune_bench.py [--size 64] [--rounds 3] [--blocks 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from quality_bench import DATASET, ensure_weights  # noqa: E402


def load_photos(size: int):
    import numpy as np

    from transferflow.data.decode import decode_images

    splits = {"train": ([], []), "val": ([], [])}
    for label, folder in enumerate(sorted(p for p in DATASET.iterdir() if p.is_dir())):
        files = sorted(folder.iterdir())
        cut_val, cut_test = round(len(files) * 0.7), round(len(files) * 0.8)
        for name, part in (("train", files[:cut_val]), ("val", files[cut_val:cut_test])):
            splits[name][0].extend(part)
            splits[name][1].extend([label] * len(part))
    return {name: (decode_images(paths, size).images, np.array(labels, np.int32))
            for name, (paths, labels) in splits.items()}


def classifier(weights: Path, size: int, blocks: int):
    import keras

    from transferflow.training import backbones
    from transferflow.training import model as modeling

    spec = backbones.get_spec("vgg16")
    keras.utils.set_random_seed(0)
    model = modeling.build_classifier(backbones.construct(spec, size, weights), spec, 10, 0.2)
    modeling.unfreeze_top_blocks(model, spec, blocks)
    return model, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=2)
    args = parser.parse_args()
    import numpy as np

    from transferflow.training import activations
    from transferflow.training.fit import compile_for

    data = load_photos(args.size)
    weights = ensure_weights()
    whole, spec = classifier(weights, args.size, args.blocks)
    split = classifier(weights, args.size, args.blocks)[0]
    cut = activations.find_cut(split.get_layer("backbone"), spec.blocks[-args.blocks:])
    models = activations.split_classifier(split, cut)
    started = time.perf_counter()
    cached = {name: (models.bottom.predict(x, batch_size=32, verbose=0)[1].astype(np.float16), y)
              for name, (x, y) in data.items()}
    bottom_s = time.perf_counter() - started
    ways = {"end to end (images)": (whole, data), "top on cached activations": (models.top, cached)}
    seconds, cpu = {name: [] for name in ways}, {name: [] for name in ways}
    for model, inputs in ways.values():
        compile_for(model, 1e-4)
        fit_once(model, inputs)  # warm-up: tracing, first allocations
    for _ in range(args.rounds):
        for name, (model, inputs) in ways.items():
            wall, used = fit_once(model, inputs)
            seconds[name].append(wall)
            cpu[name].append(used)
    ratio = _median_ratio(*seconds.values())
    cpu_ratio = _median_ratio(*cpu.values())
    megabytes = cached["train"][0].nbytes / 2**20
    print(f"{len(data['train'][1])} train / {len(data['val'][1])} val photos at {args.size} px, VGG16 top "
          f"{args.blocks} blocks ({models.cut} cached, {megabytes:.0f} MB as float16), batch 32, "
          f"{os.cpu_count()} CPU cores")
    for name, values in seconds.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:28} epoch s: {shown} (median {statistics.median(values):.1f}); CPU s median "
              f"{statistics.median(cpu[name]):.1f}")
    print(f"the bottom's one pass over train + val: {bottom_s:.1f} s")
    print(f"fine-tuning epochs on cached activations: {ratio:.2f}x faster in wall time, {cpu_ratio:.2f}x in "
          f"CPU time (medians of {args.rounds} rounds)")


def _median_ratio(slow: list[float], fast: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(slow, fast, strict=True))


def fit_once(model, inputs) -> tuple[float, float]:
    """One epoch with validation: (wall seconds, CPU seconds of this process)."""
    from transferflow.training.fit import make_dataset

    train = make_dataset(*inputs["train"], 32, True, 0)
    val = make_dataset(*inputs["val"], 32, False, 0)
    started, cpu = time.perf_counter(), time.process_time()
    model.fit(train, validation_data=val, epochs=1, verbose=0)
    return time.perf_counter() - started, time.process_time() - cpu


if __name__ == "__main__":
    main()
