"""Training speed: transferflow's training phases against the plain Keras-guide recipe.

(a) the Keras transfer-learning guide's recipe in plain Keras: VGG16 frozen (training=False)
    under GlobalAveragePooling -> Dropout 0.2 -> Dense softmax, called on the images every
    epoch (Adam 1e-3), then the same top blocks as (b) unfrozen (transferflow's default
    fine_tune_blocks), recompiled and fine-tuned at a constant 1e-5.
(b) transferflow's product path with its defaults: `phases.train_head` then `phases.fine_tune`,
    as the flow's tasks call them, against a local SeaweedFS this bench starts. That is the
    compute plan for this machine (precision, XLA, strategy), the backbone built from the
    weights file, its features computed once and stored in S3, the head trained on them with
    checkpoints in S3 on the default cadence (one when 60 s have passed since the last, at an
    epoch's end; uploads overlap training), the model staged to S3; then the staged model loaded,
    its top blocks fine-tuned (on the frozen bottom's cached activations) with the warm-up + cosine
    schedule and checkpoints, and staged.

Both sides: the same prepared images (the dataset stage's own split of a generated dataset),
the same randomly initialised (He) VGG16 weights file, batch 32, the same epochs (no early
stopping), in one process. Times are wall clock; the ratio is against (a) in the same run.

Speed only: the generated classes are colour-coded, so accuracy on them says nothing about
quality (both sides scored 100% when this bench printed it). For quality on real photos see
bench/quality_bench.py.

    .venv/bin/python bench/train_bench.py [--per-class 200] [--head-epochs 10] [--fine-tune-epochs 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUIET = logging.getLogger("bench")
QUIET.setLevel(logging.WARNING)
logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notes from feature extraction


def keras_recipe(weights_file: Path, train, val, blocks: tuple[str, ...], args) -> dict:
    """The Keras guide's two phases on in-memory images: the backbone runs every epoch."""
    import keras
    import tensorflow as tf

    def batches(x, y, shuffle: bool):
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(len(x), seed=0) if shuffle else ds
        return ds.batch(32).map(lambda a, b: (tf.cast(a, tf.float32), b)).prefetch(tf.data.AUTOTUNE)

    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.load_weights(weights_file)
    base.trainable = False
    inputs = keras.Input((32, 32, 3))
    x = base(keras.applications.vgg16.preprocess_input(inputs), training=False)
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    fit = dict(x=batches(*train, True), validation_data=batches(*val, False), verbose=0, shuffle=False)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(epochs=args.head_epochs, **fit)
    head_s = time.perf_counter() - started
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith(blocks)
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(epochs=args.fine_tune_epochs, **fit)
    return {"head_s": head_s, "total_s": time.perf_counter() - started}


def transferflow_phases(config, dataset, backbone) -> dict:
    """train_head then fine_tune, exactly as the flow's tasks run them."""
    from transferflow.pipeline import phases
    from transferflow.publishing import stages as publishing

    started = time.perf_counter()
    head = phases.train_head(config, dataset, backbone, "bench-run", logger=QUIET)
    head_s = time.perf_counter() - started
    phases.fine_tune(config, dataset, head, "bench-run", logger=QUIET)
    total_s = time.perf_counter() - started
    publishing.cleanup_run("bench-run")
    return {"head_s": head_s, "total_s": total_s, "plan": head.metrics["compute"]}


def prepare(work: Path, args):
    """A generated dataset through the real dataset stage, a weights file, and the config."""
    from transferflow.config import RetrainConfig
    from transferflow.data import load_prepared
    from transferflow.devstack.samples import write_dataset, write_random_weights
    from transferflow.pipeline import phases

    folder = write_dataset(work / "shapes", classes=3, per_class=args.per_class)
    weights = write_random_weights(work / "vgg16-he.weights.h5", seed=1)
    config = RetrainConfig(dataset=str(folder), weights=str(weights), image_size=32,
                           head_epochs=args.head_epochs, fine_tune_epochs=args.fine_tune_epochs,
                           patience=max(args.head_epochs, args.fine_tune_epochs))  # no early stop: equal work
    phases.check_storage()
    dataset = phases.download_dataset(config, logger=QUIET)
    splits = load_prepared(dataset).splits
    return config, dataset, weights, splits["train"], splits["val"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    args = parser.parse_args()
    from transferflow.devstack import s3server
    from transferflow.pipeline import phases

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = s3server.start(work / "s3")
        os.environ.update({**server.env(), "TRANSFERFLOW_BUCKET": "train-bench",
                           "TRANSFERFLOW_CACHE_DIR": str(work / "cache")})
        try:
            config, dataset, weights, train, val = prepare(work, args)
            backbone = phases.build_backbone(config, logger=QUIET)
            blocks = top_blocks(config)
            baseline = keras_recipe(weights, train, val, blocks, args)
            ours = transferflow_phases(config, dataset, backbone)
        finally:
            s3server.stop_process(server.process)
    report(baseline, ours, len(train[0]), len(val[0]), blocks, args)


def top_blocks(config) -> tuple[str, ...]:
    """The VGG16 blocks transferflow unfreezes for fine-tuning with this config."""
    from transferflow.training.backbones import get_spec

    blocks = get_spec("vgg16").blocks
    return tuple(blocks if config.fine_tune_blocks == "all" else blocks[-config.fine_tune_blocks:])


def report(baseline: dict, ours: dict, n_train: int, n_val: int, blocks: tuple[str, ...], args) -> None:
    tuned = " + ".join(block.rstrip("_") for block in blocks)
    print(f"{n_train} train / {n_val} val images, 32 px, VGG16, {args.head_epochs} head epochs + "
          f"{args.fine_tune_epochs} fine-tune epochs of {tuned}, batch 32, {os.cpu_count()} CPU cores")
    print(f"transferflow compute plan: {ours['plan']['precision']}, XLA "
          f"{'on' if ours['plan']['jit_compile'] else 'off'}, strategy {ours['plan']['strategy']}")
    print(f"{'path':48} {'head s':>7} {'img/s':>7} {'total s':>8}")
    for name, row in (("keras recipe (backbone every epoch)", baseline),
                      ("transferflow phases (defaults, S3 checkpoints)", ours)):
        print(f"{name:48} {row['head_s']:7.1f} {n_train * args.head_epochs / row['head_s']:7.0f} "
              f"{row['total_s']:8.1f}")
    print(f"head phase speed-up: {baseline['head_s'] / ours['head_s']:.1f}x; whole training: "
          f"{baseline['total_s'] / ours['total_s']:.1f}x (accuracy: see bench/quality_bench.py)")


if __name__ == "__main__":
    main()
