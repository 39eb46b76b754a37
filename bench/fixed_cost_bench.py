"""The fixed cost of a run: this checkout's `transferflow train` against an earlier revision's.

The run is the quality bench's 64 px row (../shared/datasets/sign-language-digits split as
bench/quality_bench.py splits it, real pretrained VGG16 weights, --image-size 64 --head-epochs 5
--fine-tune-epochs 3), run as a user runs it. The fixed cost is the whole process's wall time less
the work that grows with the data and the epochs: the backbone's feature pass and the training
epochs, both read from the run's own log lines ("backbone features computed once ... (Ns)", "<phase>
epoch i/n (Ns)"), which every revision since the feature cache writes. The earlier revision runs
from `git archive REV` with this venv (its packages put first on PYTHONPATH), so only the code
differs. The two sides alternate; each run has its own bucket and cache (nothing reused), and one
Prefect database, warmed first, serves both.

    .venv/bin/python bench/fixed_cost_bench.py [--before 898e42a] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_bench import DATASET, ROOT, ensure_weights, write_split  # noqa: E402

FLAGS = ["--image-size", "64", "--head-epochs", "5", "--fine-tune-epochs", "3", "--seed", "0"]
FEATURES = re.compile(r"backbone features computed once for .*? \((\d+\.\d)s\)")
EPOCH = re.compile(r"- (head|fine_tune) epoch \d+/\d+ \((\d+\.\d)s\)")


def checkout(rev: str, work: Path) -> Path:
    """`rev`'s tree, with its package folders under the names they install as."""
    source, packages = work / "src", work / "packages"
    source.mkdir(parents=True)
    packages.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    for name, folder in (("transferflow", "transferflow"), ("transferflow_flows", "flows"),
                         ("transferflow_tasks", "tasks")):
        (packages / name).symlink_to(source / folder)
    return packages


def run(split: Path, weights: Path, name: str, env: dict, log: Path) -> dict:
    command = [str(ROOT / ".venv" / "bin" / "transferflow"), "train", "--dataset", str(split), "--weights",
               str(weights), "--model-name", name, *FLAGS]
    started = time.monotonic()
    with log.open("w") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    seconds = time.monotonic() - started
    text = log.read_text()
    if result.returncode:
        sys.exit(f"{name} failed; its log: {log}\n{text[-3000:]}")
    features = sum(float(s) for s in FEATURES.findall(text))
    epochs = {"head": 0.0, "fine_tune": 0.0}
    for phase, value in EPOCH.findall(text):
        epochs[phase] += float(value)
    fixed = seconds - features - sum(epochs.values())
    return {"seconds": seconds, "features": features, **epochs, "fixed": fixed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="898e42a", help="the earlier revision (default: issue 23's base)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from transferflow.devstack import s3server

    weights = ensure_weights()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        split = work / "sign-digits"
        write_split(DATASET, split, 0)
        before = checkout(args.before, work / "before")
        server = s3server.start(work / "s3")
        base_env = {**os.environ, **server.env(), "PREFECT_HOME": str(work / "prefect"),
                    "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-c", "from prefect import flow; flow(lambda: 1)()"], env=base_env,
                       check=True, capture_output=True)  # the database's migrations, once, outside the runs
        sides = {args.before: {"PYTHONPATH": str(before)}, "this checkout": {}}
        results: dict[str, list[dict]] = {side: [] for side in sides}
        try:
            for round_ in range(args.rounds):
                for index, (side, extra) in enumerate(sides.items()):
                    tag = f"r{round_}-s{index}"
                    env = {**base_env, **extra, "TRANSFERFLOW_BUCKET": f"fixed-{tag}",
                           "TRANSFERFLOW_CACHE_DIR": str(work / f"cache-{tag}")}
                    (work / tag).mkdir()
                    results[side].append(run(split, weights, f"fixed-{tag}", env, work / tag / "train.log"))
                    row = results[side][-1]
                    print(f"{side:14} whole {row['seconds']:6.1f} s  features {row['features']:5.1f}  "
                          f"head epochs {row['head']:5.1f}  fine-tune epochs {row['fine_tune']:6.1f}  "
                          f"fixed {row['fixed']:5.1f}", flush=True)
        finally:
            s3server.stop_process(server.process)
    old, new = (statistics.median(r["fixed"] for r in results[side]) for side in sides)
    print(f"\nfixed cost (median of {args.rounds}): {args.before} {old:.1f} s, this checkout {new:.1f} s: "
          f"{old / new:.2f}x less ({os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
