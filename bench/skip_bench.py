"""A skipped run's cost with the stack up: how long does a scheduled-style run (if_changed) take to
find that nothing changed, beyond Prefect's own start?

Setup: the whole local stack in a temp dir, as `make stack-up` starts it (SeaweedFS, `prefect server`,
the cpu and gpu pools with a process worker each, the deployments), with a small generated dataset
(3 classes x 40 images, 32 px) and random VGG16 weights in S3.

Runs, created through the REST API on retrain/manual with if_changed on:
  1. one that trains (nothing registered yet): the baseline, measured in the same run;
  2. --runs more on the same data and configuration, one after the other: each ends Skipped.
For each: `prefect start` = created -> Running (the worker's poll, the process, Prefect's and the
flow module's imports), `flow` = Running -> final (what transferflow does: the storage and input
checks and the change check), and the whole wall time. Goal: the skipped runs' `flow` under 10 s.

    .venv/bin/python bench/skip_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 10.0


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def run_once(stack, deployment: str, config: dict) -> dict:
    """Create a flow run, wait until it is final; its state and the three durations."""
    from transferflow.devstack.stack import api

    created = time.monotonic()
    run = api(stack, "POST", f"/deployments/{deployment}/create_flow_run", {"parameters": {"config": config}})
    while True:
        run = api(stack, "GET", f"/flow_runs/{run['id']}")
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.25)
    wall = time.monotonic() - created
    start = seconds_between(run["created"], run["start_time"])
    return {"state": run["state_name"], "wall": wall, "start": start,
            "flow": seconds_between(run["start_time"], run["end_time"]), "message": run["state"]["message"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="skipped runs after the training one")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from tests.conftest import upload_folder
    from transferflow import storage
    from transferflow.devstack import s3server
    from transferflow.devstack.samples import write_dataset, write_random_weights
    from transferflow.devstack.stack import Stack, deployments, down, up

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["TRANSFERFLOW_CACHE_DIR"] = str(work / "cache")
        server = s3server.start(work / "s3")
        os.environ.update({**server.env(), "TRANSFERFLOW_BUCKET": "skip-bench"})
        stack = Stack(home=work / "prefect", port=s3server.free_ports(1)[0], poll_seconds=2,
                      worker_env={"TRANSFERFLOW_BUCKET": "skip-bench"})
        try:
            storage.ensure_bucket("skip-bench")
            images = write_dataset(work / "shapes", classes=3, per_class=40)
            dataset = upload_folder(images, "skip-bench", "shapes")
            storage.upload_file(write_random_weights(work / "w.weights.h5"), "skip-bench",
                                "weights/w.weights.h5")
            up(stack)
            manual = next(d["id"] for d in deployments(stack)
                          if d["flow_name"] == "retrain" and d["name"] == "manual")
            config = {"dataset": dataset, "weights": "s3://skip-bench/weights/w.weights.h5",
                      "image_size": 32, "head_epochs": 3, "fine_tune_epochs": 1, "fine_tune_gate": 0.0,
                      "if_changed": True, "model_name": "skip-bench"}
            rows = [("trains", run_once(stack, manual, config))]
            rows += [(f"skipped {i + 1}", run_once(stack, manual, config)) for i in range(args.runs)]
        finally:
            down(stack)
            s3server.stop_process(server.process)
    report(rows)


def report(rows: list[tuple[str, dict]]) -> None:
    print(f"\n{'run':10} {'state':10} {'prefect start':>13} {'flow':>7} {'wall':>7}")
    for name, r in rows:
        print(f"{name:10} {r['state']:10} {r['start']:12.1f}s {r['flow']:6.1f}s {r['wall']:6.1f}s")
    trained, skipped = rows[0][1], [r for _, r in rows[1:]]
    flow = statistics.median(r["flow"] for r in skipped)
    states = ", ".join(sorted({r["state"] for r in skipped}))
    start, wall = (statistics.median(r[key] for r in skipped) for key in ("start", "wall"))
    print(f"\nskipped runs: state {states}; median flow {flow:.1f}s beyond Prefect's start (median "
          f"{start:.1f}s); goal < {GOAL_S:.0f}s: {'met' if flow < GOAL_S else 'NOT met'}")
    print(f"a skipped run's flow time is {flow / trained['flow']:.3f}x the training run's "
          f"({trained['flow']:.1f}s), its wall time {wall / trained['wall']:.2f}x")
    print(f"reason: {skipped[0]['message']}")
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
