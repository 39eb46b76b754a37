"""GPU check: VGG16 transfer-learning speed on Keras 3 + JAX, mixed precision against float32.

Measures images/s for (1) the head phase on cached features (the frozen VGG16 runs once over
the images; dropout -> dense(softmax, float32) then trains on the pooled features, as
transferflow.training.fit.fit_head_on_features does) and (2) fine-tuning VGG16's block5 inside the
full classifier (transferflow.training.model.build_classifier, Adam 1e-5). Each runs under the mixed
policy and under float32 in the same process; the first epoch/batch (XLA compile) is a warm-up
excluded from timing. Weights are random (He normal): no downloads. Prints a table and one
`RESULT {json}` line. Never imports TensorFlow: data are numpy arrays fed to model.fit/predict.

On a GPU machine with JAX (CUDA) but no TensorFlow, from the repo root (the repo carried there):

    export KERAS_BACKEND=jax   # else `import keras` looks for TensorFlow
    python -c "import keras" || pip install --no-index --find-links bench/wheels keras
    python bench/gpu_check.py [--images 2048 --image-size 224 --batch-size 64 --policy mixed_bfloat16]

(or just `bash bench/gpu_check.sh`). KERAS_BACKEND defaults to jax in this script. Without a GPU
it refuses the full sizes unless --allow-cpu; `--smoke` (32 images, 32 px, 1 epoch) runs on a CPU
in a venv with `pip install "jax[cpu]" keras`:

    KERAS_BACKEND=jax python bench/gpu_check.py --smoke

The float32 baseline uses JAX's default matmul precision (printed), which on recent NVIDIA GPUs
may already run convolutions in TF32; set JAX_DEFAULT_MATMUL_PRECISION=highest for strict float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `transferflow`

if os.environ["KERAS_BACKEND"] != "jax":
    sys.exit(f"gpu_check: this check runs Keras on JAX; unset KERAS_BACKEND or set it to jax "
             f"(it is {os.environ['KERAS_BACKEND']!r}).")
try:
    import jax
    import keras
except ImportError as exc:
    sys.exit(f"gpu_check: {exc}. This check needs JAX and Keras 3 in this Python: "
             "pip install 'jax[cuda12]' keras (or jax[cuda13]; 'jax[cpu]' for --smoke).")
import numpy as np  # noqa: E402

from transferflow.training.backbones import get_spec  # noqa: E402
from transferflow.training.model import BackbonePreprocess, build_classifier, unfreeze_top_blocks  # noqa: E402

SPEC = get_spec("vgg16")
SEED = 0


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line flags; --smoke shrinks every size for a quick CPU run."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5, help="head epochs on cached features")
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--policy", default="auto",
                        choices=["auto", "mixed_float16", "mixed_bfloat16"],
                        help="mixed policy to compare with float32; auto: mixed_float16 on GPU, "
                             "mixed_bfloat16 otherwise")
    parser.add_argument("--smoke", action="store_true",
                        help="32 images, 32 px, batch 16, 1 epoch: a quick CPU check")
    parser.add_argument("--allow-cpu", action="store_true", help="run full sizes without a GPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.image_size, args.batch_size = 32, 32, 16
        args.epochs = args.fine_tune_epochs = 1
    # Whole batches only: a smaller last batch would compile again inside the timed region.
    args.images = max(args.batch_size, args.images // args.batch_size * args.batch_size)
    return args


def accelerator() -> dict:
    """The JAX devices in use and the library versions."""
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "gpu": devices[0].platform == "gpu",
            "jax": jax.__version__, "keras": keras.__version__, "backend": keras.backend.backend(),
            "matmul_precision": str(jax.config.jax_default_matmul_precision or "default")}


def make_data(n: int, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 RGB images (0-255, raw pixels as the classifier expects) and labels."""
    rng = np.random.default_rng(SEED)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return x, rng.integers(0, classes, size=n).astype(np.int32)


def he_weights(size: int) -> list:
    """VGG16 (no top) weights with He-normal conv kernels, built once in float32."""
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([keras.initializers.HeNormal(seed=SEED)(kernel.shape), bias])
    return base.get_weights()


def vgg16(size: int, weights: list) -> keras.Model:
    """A headless VGG16 under the current dtype policy, holding `weights`."""
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    base.set_weights(weights)
    return base


def sync(model: keras.Model) -> None:
    """Wait for the device: fetch one trained weight (JAX dispatches asynchronously)."""
    keras.ops.convert_to_numpy(model.trainable_weights[-1].value)


def extract_features(x: np.ndarray, weights: list, args) -> tuple[np.ndarray, dict]:
    """Run the frozen backbone once over x; returns pooled features and the timing."""
    inputs = keras.Input((args.image_size, args.image_size, 3))
    h = BackbonePreprocess(SPEC.name)(inputs)
    h = vgg16(args.image_size, weights)(h, training=False)
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    started = time.perf_counter()
    extractor.predict(x[:args.batch_size], batch_size=args.batch_size, verbose=0)  # compile
    warm = time.perf_counter() - started
    started = time.perf_counter()
    features = extractor.predict(x, batch_size=args.batch_size, verbose=0)
    seconds = time.perf_counter() - started
    return features, {"images_per_s": len(x) / seconds, "seconds": seconds, "warmup_s": warm}


def timed_fit(model: keras.Model, x, y, epochs: int, batch_size: int) -> dict:
    """One warm-up step (compiles), then `epochs` timed epochs; returns images/s."""
    started = time.perf_counter()
    model.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, epochs=1, verbose=0)
    sync(model)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    sync(model)
    seconds = time.perf_counter() - started
    return {"images_per_s": len(x) * epochs / seconds, "seconds": seconds, "warmup_s": warm,
            "loss": float(history.history["loss"][-1])}


def train_head(features: np.ndarray, y: np.ndarray, args) -> dict:
    """Dropout -> Dense(softmax, float32) trained on the cached pooled features."""
    head = keras.Sequential([
        keras.Input((features.shape[1],)),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(args.classes, activation="softmax", dtype="float32"),
    ])
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    return timed_fit(head, features, y, args.epochs, args.batch_size)


def fine_tune(x: np.ndarray, y: np.ndarray, weights: list, args) -> tuple[dict, dict]:
    """Fine-tune block5 of the full classifier; also returns its compute and output dtypes."""
    model = build_classifier(vgg16(args.image_size, weights), SPEC, args.classes, dropout=0.2)
    unfreeze_top_blocks(model, SPEC, 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    dtypes = {"compute_dtype": model.get_layer("backbone").compute_dtype,
              "output_dtype": keras.backend.standardize_dtype(model(x[:2], training=False).dtype)}
    return timed_fit(model, x, y, args.fine_tune_epochs, args.batch_size), dtypes


def measure(policy: str, x: np.ndarray, y: np.ndarray, weights: list, args) -> dict:
    """All three measurements under one dtype policy; the policy is reset to float32 after."""
    keras.backend.clear_session()  # before set_dtype_policy: clear_session resets the policy
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(SEED)
        features, extract = extract_features(x, weights, args)
        head = train_head(features, y, args)
        tune, dtypes = fine_tune(x, y, weights, args)
    finally:
        keras.config.set_dtype_policy("float32")
    return {"feature_extraction": extract, "head_training": head, "fine_tune": tune, **dtypes,
            "feature_dtype": str(features.dtype)}


def print_table(info: dict, results: dict, mixed: str, args) -> dict:
    """The human-readable summary; returns the mixed/float32 speed-up per measurement."""
    print(f"\naccelerator: {info['platform']} x{info['device_count']} ({info['device_kind']}); "
          f"jax {info['jax']}, keras {info['keras']}, matmul precision {info['matmul_precision']}")
    print(f"VGG16, {args.images} images @ {args.image_size} px, batch {args.batch_size}, "
          f"{args.epochs} head / {args.fine_tune_epochs} fine-tune epochs")
    print(f"{'measurement':28} {'float32 img/s':>14} {mixed + ' img/s':>20} {'speed-up':>9}")
    speedups = {}
    for name in ("feature_extraction", "head_training", "fine_tune"):
        base, fast = (results[p][name]["images_per_s"] for p in ("float32", mixed))
        speedups[name] = fast / base
        print(f"{name:28} {base:14.1f} {fast:20.1f} {fast / base:8.2f}x")
    return speedups


def check_dtypes(results: dict, mixed: str) -> bool:
    """Print and check: mixed computes in 16 bits, the classifier's output stays float32."""
    compute, out = results[mixed]["compute_dtype"], results[mixed]["output_dtype"]
    ok = out == "float32" and compute == mixed.removeprefix("mixed_")
    print(f"under {mixed}: backbone computes in {compute}, classifier output dtype {out} "
          f"({'ok' if ok else 'WRONG: expected ' + mixed.removeprefix('mixed_') + ' / float32'})")
    return ok


def main(argv=None) -> int:
    args = parse_args(argv)
    info = accelerator()
    if not info["gpu"]:
        print(f"NOTE: no GPU visible to JAX (platform {info['platform']}); these are CPU numbers, "
              "not a GPU check.")
        if not (args.smoke or args.allow_cpu):
            print("gpu_check: refusing full sizes on a CPU; pass --smoke or --allow-cpu.")
            return 2
    mixed = args.policy if args.policy != "auto" else ("mixed_float16" if info["gpu"]
                                                       else "mixed_bfloat16")
    x, y = make_data(args.images, args.image_size, args.classes)
    weights = he_weights(args.image_size)
    results = {p: measure(p, x, y, weights, args) for p in ("float32", mixed)}
    speedups = print_table(info, results, mixed, args)
    dtype_ok = check_dtypes(results, mixed)
    tf_loaded = "tensorflow" in sys.modules
    print(f"tensorflow imported: {tf_loaded}")
    record = {**info, "policy": mixed, "smoke": args.smoke, "images": args.images,
              "image_size": args.image_size, "batch_size": args.batch_size, "epochs": args.epochs,
              "fine_tune_epochs": args.fine_tune_epochs, "results": results, "speedup": speedups,
              "output_dtype_ok": dtype_ok, "tensorflow_imported": tf_loaded}
    print("RESULT " + json.dumps(record, sort_keys=True))
    return 0 if dtype_ok and not tf_loaded else 1


if __name__ == "__main__":
    sys.exit(main())
