"""Retraining on grown data, cold against warm: does `--init-from` save time, and at what accuracy?

Data: ../shared/datasets/sign-language-digits (2,062 real photos, 10 classes). Per class, a seeded
half of the photos goes into a folder first; a first `transferflow train` on it registers
`signs:1` (production). Then the rest of the photos are added to the same folder (the dataset
grows to all of them) and two runs train on it, in their own processes, one after the other:
  cold  `transferflow train --model-name signs-cold`                 (pretrained backbone, new head)
  warm  `transferflow train --model-name signs-warm --init-from signs:1`  (signs:1's weights)
Both use the same flags otherwise (transferflow's defaults, --image-size 64, real pretrained VGG16
conv weights from ../shared/tools/pretrained_vgg16.py), so they prepare, and are tested on, the very
same stable splits; none of those test photos was in signs:1's train or val split (the splits are
drawn from each photo's content, so growing the folder moves no photo).

Printed: each run's wall time (the whole process, start to exit), test accuracy and macro-F1, epochs
run per phase, and warm's time as a ratio of cold's, measured in the same run of the bench.

    .venv/bin/python bench/retrain_bench.py [--image-size 64] [--seed 0] [--extra "--fine-tune-epochs 3"]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from quality_bench import DATASET, ensure_weights, require_kit  # noqa: E402  (the same photos and weights)

TRANSFERFLOW = str(ROOT / ".venv" / "bin" / "transferflow")


def split_halves(source: Path, seed: int) -> tuple[list[Path], list[Path]]:
    """Per class, a seeded half of the photos (first) and the rest (added later)."""
    first, later = [], []
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        random.Random(f"{seed}-{folder.name}").shuffle(files)
        first += files[: len(files) // 2]
        later += files[len(files) // 2:]
    return first, later


def copy_into(files: list[Path], target: Path) -> None:
    for file in files:
        destination = target / file.parent.name / file.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, destination)


def train(dataset: Path, name: str, flags: list[str], env: dict, log: Path) -> dict:
    """One `transferflow train` process; its wall time and what the registry recorded."""
    command = [TRANSFERFLOW, "train", "--dataset", str(dataset), "--model-name", name, *flags]
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - started
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed; its log: {log}\n" + log.read_text()[-3000:])
    shown = subprocess.run([TRANSFERFLOW, "models", "show", name, "--json"], capture_output=True, text=True,
                           env=env, check=True)
    meta = json.loads(shown.stdout)
    meta = meta.get("metadata", meta)
    test, head, fine = meta["metrics"]["test"], meta["metrics"]["head"], meta["metrics"]["fine_tune"] or {}
    return {"seconds": seconds, "accuracy": test["accuracy"], "macro_f1": test.get("macro_f1"),
            "images": test["images"], "head_epochs": head["epochs_run"],
            "fine_epochs": fine.get("epochs_run", 0), "final": meta["gate"]["final_phase"],
            "train": sum(meta["dataset"]["counts"]["train"].values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", default="", help="extra transferflow flags for every run")
    args = parser.parse_args()
    require_kit()
    from transferflow.devstack import s3server

    weights = ensure_weights()
    flags = ["--weights", str(weights), "--image-size", str(args.image_size), "--seed", str(args.seed),
             *args.extra.split()]
    first, later = split_halves(DATASET, args.seed)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        signs = work / "signs"
        copy_into(first, signs)
        server = s3server.start(work / "s3")
        env = {**os.environ, **server.env(), "TRANSFERFLOW_BUCKET": "retrain-bench",
               "TRANSFERFLOW_CACHE_DIR": str(work / "cache"), "PREFECT_HOME": str(work / "prefect"),
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}  # 20 s is too short on busy cores
        try:
            rows["first (half)"] = train(signs, "signs", flags, env, work / "first.log")
            print_row("first (half)", rows["first (half)"])
            copy_into(later, signs)  # the dataset grows to every photo
            rows["cold (all)"] = train(signs, "signs-cold", flags, env, work / "cold.log")
            print_row("cold (all)", rows["cold (all)"])
            rows["warm (all)"] = train(signs, "signs-warm", [*flags, "--init-from", "signs:1"], env,
                                       work / "warm.log")
            print_row("warm (all)", rows["warm (all)"])
        finally:
            s3server.stop_process(server.process)
    cold, warm = rows["cold (all)"], rows["warm (all)"]
    print(f"\nsign-language-digits: {len(first)} photos, then {len(first) + len(later)}; "
          f"{args.image_size} px, seed {args.seed}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    for row, result in rows.items():  # the header comes with the first row
        print_row(row, result)
    print(f"warm / cold wall time: {warm['seconds'] / cold['seconds']:.2f}x; test accuracy warm - cold: "
          f"{100 * (warm['accuracy'] - cold['accuracy']):+.1f} points on the same {cold['images']} "
          "test photos")


HEADER = f"{'run':13} {'train':>6} {'seconds':>8} {'test acc':>8} {'macro-F1':>8} {'epochs':>7}  final phase"


def print_row(row: str, r: dict) -> None:
    if row.startswith("first"):
        print(HEADER)
    print(f"{row:13} {r['train']:6d} {r['seconds']:8.1f} {r['accuracy']:8.3f} {r['macro_f1']:8.3f} "
          f"{r['head_epochs']:>3}+{r['fine_epochs']:<3}  {r['final']}", flush=True)


if __name__ == "__main__":
    main()
