"""How fast `transferflow train` refuses input it can know is bad, against Prefect's start-up.

Each row is a fresh `transferflow train` process, timed from start to exit, against the local
SeaweedFS this bench starts:
- baseline: a valid run, stopped at the flow's first log line: the time until Prefect's
  ephemeral API has started and the flow begins, which is what every refusal cost before
  the preflight checks existed;
- a local dataset path that does not exist;
- a weights file that does not exist;
- an http URL on a host that does not resolve and is not mirrored (refused before the flow
  too; inside the flow the download stage would fail it on its first attempt as well).

    .venv/bin/python bench/refusal_bench.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(ROOT / ".venv" / "bin" / "transferflow")


def timed(argv: list[str], env: dict, until: str | None = None) -> tuple[float, str]:
    """Seconds until the process exits, or until a line containing `until` appears (then killed)."""
    started = time.monotonic()
    process = subprocess.Popen([CLI, "train", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    output = []
    for line in process.stdout:
        output.append(line)
        if until and until in line:
            process.kill()
            break
    process.wait()
    return time.monotonic() - started, "".join(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # this process's own TensorFlow (the samples)
    from transferflow.devstack import s3server
    from transferflow.devstack.samples import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = s3server.start(work / "s3")
        env = {**os.environ, **server.env(), "TRANSFERFLOW_BUCKET": "refusal-bench",
               "TRANSFERFLOW_CACHE_DIR": str(work / "cache"), "PREFECT_HOME": str(work / "prefect")}
        env.pop("PREFECT_API_URL", None)
        data = write_dataset(work / "shapes", classes=2, per_class=4)
        rows = {
            "baseline: flow starts (valid input)": (["--dataset", str(data), "--weights", "none"],
                                                    "Beginning flow run"),
            "missing local dataset": (["--dataset", str(work / "nowhere"), "--weights", "none"], None),
            "missing weights file": (["--dataset", str(data), "--weights", str(work / "w.weights.h5")], None),
            "unknown host, not mirrored": (["--dataset", "http://example.invalid/x.tar.gz",
                                               "--weights", "none"], None),
        }
        try:
            results = {name: [timed(argv, env, until) for _ in range(args.repeat)]
                       for name, (argv, until) in rows.items()}
        finally:
            s3server.stop_process(server.process)
    baseline = statistics.median(s for s, _ in results["baseline: flow starts (valid input)"])
    print(f"median of {args.repeat} runs, {os.cpu_count()} CPU cores")
    print(f"{'case':38} {'seconds':>8} {'vs baseline':>12}  first error line")
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs)
        error = next((line.strip() for line in runs[-1][1].splitlines() if "error" in line.lower()), "")
        print(f"{name:38} {seconds:8.2f} {seconds / baseline:11.2f}x  {error[:90]}")


if __name__ == "__main__":
    main()
