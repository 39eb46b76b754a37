"""Conversion time, file size and agreement of the portable exports (ONNX, LiteRT float32 and int8)
of the default classifier: VGG16 at 64 px, randomly initialised (He-normal) backbone, a head trained
on its features of generated, learnable classes; the check runs on held-out images, as at
registration, and again on random-noise images, where answers are far from certain. Also the
runtime's time per batch of 32 beside Keras's. No object store needed.

    .venv/bin/python bench/export_bench.py [--size 64] [--classes 5] [--per-class 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def classifier(size: int, classes: int, train: tuple[np.ndarray, np.ndarray]):
    """The model the flow registers, with its head trained briefly on the backbone's features."""
    import keras

    from transferflow.training.backbones import construct, get_spec
    from transferflow.training.model import STANDARDIZE_LAYER, build_classifier

    spec = get_spec("vgg16")
    base = construct(spec, size, None)
    for seed, layer in enumerate(base.layers):  # He-normal, a seed per layer: no two kernels alike, so
        if isinstance(layer, keras.layers.Conv2D):  # converters cannot share them and sizes are real ones
            kernel, bias = layer.get_weights()
            layer.set_weights([keras.initializers.HeNormal(seed=seed)(kernel.shape), bias])
    model = build_classifier(base, spec, classes, dropout=0.2)
    features = keras.Model(model.input, model.get_layer("pool").output).predict(train[0], verbose=0)
    standardized = model.get_layer(STANDARDIZE_LAYER).adapt_to(features)
    head = keras.Sequential([keras.Input(standardized.shape[1:]), model.get_layer("classifier")])
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    head.fit(standardized, train[1], epochs=5, batch_size=32, verbose=0)  # short: unsaturated answers
    return model


def images(classes: int, per_class: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from transferflow.devstack.samples import sample_image

    rng = np.random.default_rng(seed)
    x = np.stack([sample_image(label, size, rng) for label in range(classes) for _ in range(per_class)])
    return x, np.repeat(np.arange(classes), per_class)


def per_batch_ms(run, x: np.ndarray, repeat: int = 5) -> float:
    run(x[:32])  # warm-up
    started = time.perf_counter()
    for _ in range(repeat):
        run(x[:32])
    return (time.perf_counter() - started) / repeat * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=60, help="train images per class (test: half)")
    args = parser.parse_args(argv)
    from transferflow.tflogs import import_tensorflow

    import_tensorflow()
    from transferflow.publishing import exports

    train = images(args.classes, args.per_class, args.size, seed=0)
    test = images(args.classes, args.per_class // 2, args.size, seed=1)
    model = classifier(args.size, args.classes, train)
    noise = np.random.default_rng(2).integers(0, 256, (160, args.size, args.size, 3)).astype(np.float32)
    keras_ms = per_batch_ms(lambda x: model.predict_on_batch(x), test[0].astype(np.float32))
    rows = []
    for name in exports.SPECS:
        with tempfile.TemporaryDirectory() as tmp:
            made = exports.export_verified(model, name, test, np.arange(args.classes), Path(tmp), train)
            run = exports.load(exports.SPECS[name], made.path).run
            check = made.entry["verification"]
            on_noise = exports.compare(model.predict(noise, verbose=0), np.concatenate(
                [run(noise[i:i + 32]) for i in range(0, len(noise), 32)]), np.zeros(len(noise), int))
            rows.append({"format": name, "seconds": made.entry["conversion_seconds"],
                         "mb": made.entry["size"] / 1e6, "agreement": check["agreement"],
                         "max_prob_diff": check["max_prob_diff"], "accuracy": check["accuracy"],
                         "accuracy_change": check["accuracy_change"], "noise_agreement": on_noise.agreement,
                         "noise_max_prob_diff": on_noise.max_prob_diff,
                         "ms_per_32": per_batch_ms(run, test[0].astype(np.float32))})
    print(f"VGG16 classifier at {args.size} px, {args.classes} classes, {len(test[1])} test images; "
          f"Keras: {keras_ms:.0f} ms per batch of 32")
    print(f"{'format':<12} {'convert s':>9} {'size MB':>8} {'agreement':>9} {'max |dp|':>9} "
          f"{'acc':>6} {'acc chg':>8} {'noise agr':>9} {'noise |dp|':>10} {'ms/32':>6}")
    for row in rows:
        print(f"{row['format']:<12} {row['seconds']:>9.1f} {row['mb']:>8.1f} {row['agreement']:>9.4f} "
              f"{row['max_prob_diff']:>9.1e} {row['accuracy']:>6.3f} {row['accuracy_change']:>+8.4f} "
              f"{row['noise_agreement']:>9.4f} {row['noise_max_prob_diff']:>10.1e} {row['ms_per_32']:>6.0f}")
    print("RESULT " + json.dumps({"size": args.size, "keras_ms_per_32": keras_ms, "exports": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
