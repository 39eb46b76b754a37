"""Head-phase speed: transferflow's feature caching against the plain Keras recipe.

(a) the Keras transfer-learning guide's recipe: frozen VGG16 called on the raw images
    every epoch, then fine-tune block5 at a constant 1e-5; (b) transferflow's training path
    with default settings: the compute plan for this machine (precision, XLA, strategy), the
    backbone run once with the head trained on cached features, then the same fine-tune with
    the default warm-up + cosine schedule. Same process, same generated data, same randomly
    initialised (He) weights, same seeds. The ratio is against (a), measured in the same run.

    .venv/bin/python bench/train_bench.py [--per-class 200] [--head-epochs 10] [--fine-tune-epochs 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from transferflow.backbones import get_spec  # noqa: E402
from transferflow.compute import compute_scope, plan_compute  # noqa: E402
from transferflow.config import RetrainConfig  # noqa: E402
from transferflow.data import carve_splits  # noqa: E402
from transferflow.model import build_classifier, unfreeze_top_blocks  # noqa: E402
from transferflow.samples import sample_image  # noqa: E402
from transferflow.training import fit_head_on_features, fit_phase  # noqa: E402

QUIET = logging.getLogger("bench")
QUIET.setLevel(logging.WARNING)


def dataset(per_class: int, classes: int = 3):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(classes), per_class).astype(np.int32)
    x = np.stack([sample_image(int(k), 32, rng) for k in y])
    parts = carve_splits(y, {"val": 0.2}, seed=0, class_names=[str(i) for i in range(classes)])
    return (x[parts["train"]], y[parts["train"]]), (x[parts["val"]], y[parts["val"]])


def fresh_classifier(weights: list):
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.set_weights(weights)
    keras.utils.set_random_seed(0)
    return build_classifier(base, get_spec("vgg16"), 3, dropout=0.2)


def run(name: str, head_fit, schedule: str, weights, train, val, args) -> dict:
    classifier = fresh_classifier(weights)
    settings = dict(epochs=args.head_epochs, learning_rate=1e-2, batch_size=32,
                    patience=args.head_epochs, seed=0, logger=QUIET)  # no early stop: equal work
    started = time.perf_counter()
    head = head_fit(classifier, train, val, **settings)
    head_s = time.perf_counter() - started
    unfreeze_top_blocks(classifier, get_spec("vgg16"), 1)
    tuned = fit_phase(classifier, "fine_tune", train, val, schedule=schedule,
                      **{**settings, "epochs": args.fine_tune_epochs, "patience": args.fine_tune_epochs,
                         "learning_rate": 1e-5})
    total_s = time.perf_counter() - started
    return {"name": name, "head_s": head_s, "total_s": total_s,
            "images_per_s": len(train[0]) * args.head_epochs / head_s,
            "head_val_acc": head.val_accuracy, "final_val_acc": tuned.val_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    args = parser.parse_args()
    train, val = dataset(args.per_class)
    init = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in init.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([keras.initializers.HeNormal(seed=1)(kernel.shape), bias])
    weights = init.get_weights()

    def keras_recipe(classifier, train, val, **settings):
        return fit_phase(classifier, "head", train, val, **settings)

    defaults = RetrainConfig()
    plan = plan_compute(defaults.mixed_precision, defaults.xla, defaults.strategy)
    baseline = run("keras recipe (backbone every epoch)", keras_recipe, "constant", weights, train, val, args)
    with compute_scope(plan):
        ours = run("transferflow (defaults)", fit_head_on_features, defaults.fine_tune_schedule, weights,
                   train, val, args)
    results = [baseline, ours]
    print(f"{len(train[0])} train / {len(val[0])} val images, 32 px, VGG16, {args.head_epochs} head "
          f"epochs + {args.fine_tune_epochs} fine-tune epochs, {os.cpu_count()} CPU cores")
    print(f"transferflow compute plan: {plan.describe(32)}")
    print(f"{'path':38} {'head s':>8} {'img/s':>8} {'total s':>8} {'head val':>9} {'final val':>9}")
    for r in results:
        print(f"{r['name']:38} {r['head_s']:8.1f} {r['images_per_s']:8.0f} {r['total_s']:8.1f} "
              f"{r['head_val_acc']:9.3f} {r['final_val_acc']:9.3f}")
    print(f"head phase speed-up: {baseline['head_s'] / ours['head_s']:.1f}x; whole training: "
          f"{baseline['total_s'] / ours['total_s']:.1f}x; head val accuracy difference: "
          f"{100 * (ours['head_val_acc'] - baseline['head_val_acc']):+.1f} points")


if __name__ == "__main__":
    main()
