"""Small generated image datasets whose classes are learnable: for tests, demos and
benchmarks, where real data cannot be downloaded.

    python -m transferflow.devstack.samples DIR [--classes 3] [--per-class 40] [--size 32] [--kind patterns]

Two kinds: "stripes" (each class its own colour and stripe angle, with noise) and "patterns"
(each class one fixed shape, a disc, a triangle, a corner or diagonal bars, drawn aligned in two
random flat colours per image: many colours, few shapes). Patterns are the hard
case for a grey-structure near-duplicate check: every image of a class has the same layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

PALETTE = [(220, 40, 40), (40, 180, 60), (50, 80, 220), (230, 200, 40), (160, 60, 200),
           (40, 200, 200), (240, 130, 30), (120, 120, 120)]


def sample_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy image of class `label`: its own colour and stripe direction."""
    color = np.array(PALETTE[label % len(PALETTE)], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = np.pi * label / 4 + rng.normal(0, 0.15)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / rng.uniform(5, 9)))
    image = color * (0.65 + 0.35 * stripes[..., None]) + rng.normal(0, 20, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


PATTERNS = ("disc", "triangle", "corner", "bars")


def pattern_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class `label`'s shape (PATTERNS, cycled), drawn at the same place in every image, in two
    random flat colours: distinct images whose grey structure is the same within a class."""
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size
    shape = PATTERNS[label % len(PATTERNS)]
    mask = {"disc": (u - 0.35) ** 2 + (v - 0.4) ** 2 < 0.06, "triangle": (u + v < 0.8) & (u > 0.15),
            "corner": (u < 0.375) | (v > 0.65), "bars": np.floor((u + 2 * v) * 3.5) % 2 == 1}[shape]
    ink, paper = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return np.where(mask[..., None], ink, paper).astype(np.uint8)  # flat colours, as sprites or documents


KINDS = {"stripes": sample_image, "patterns": pattern_image}


def write_dataset(root: Path, classes: int = 3, per_class: int = 40, size: int = 32, seed: int = 0,
                  splits: tuple[str, ...] = (), formats: tuple[str, ...] = ("png", "jpg"),
                  kind: str = "stripes") -> Path:
    """Write class folders (under each of `splits`, or at the top when none) of image files."""
    import tensorflow as tf

    rng, draw = np.random.default_rng(seed), KINDS[kind]
    for split in splits or ("",):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = draw(label, size, rng)
                fmt = formats[i % len(formats)]
                data = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95)
                (folder / f"img_{i:04d}.{fmt}").write_bytes(data.numpy())
    return root


def write_random_weights(path: Path, backbone: str = "vgg16", seed: int = 0) -> Path:
    """Save a randomly initialised headless backbone as a .weights.h5 file.

    Convolution kernels get He-normal values, which keep the signal alive through
    deep ReLU stacks, so a head trained on top can still learn simple classes.
    """
    import keras

    from transferflow.training.backbones import construct, get_spec

    model = construct(get_spec(backbone), 32, None)
    init = keras.initializers.HeNormal(seed=seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel, *rest = layer.get_weights()
            layer.set_weights([init(kernel.shape), *rest])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(path))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferflow.devstack.samples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=sorted(KINDS), default="stripes",
                        help="stripes: a colour and an angle per class; patterns: a shape per class "
                        "in random colours")
    parser.add_argument("--weights", type=Path, metavar="FILE.weights.h5",
                        help="also write randomly initialised vgg16 weights here")
    args = parser.parse_args(argv)
    from transferflow.tflogs import import_tensorflow

    import_tensorflow()  # without its C++ start-up lines, as the transferflow command does
    write_dataset(args.root, args.classes, args.per_class, args.size, args.seed, kind=args.kind)
    print(f"wrote {args.classes} classes x {args.per_class} images to {args.root}")
    if args.weights:
        write_random_weights(args.weights, seed=args.seed)
        print(f"wrote random vgg16 weights to {args.weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
