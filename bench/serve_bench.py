"""`transferflow serve` under load: throughput and latency with micro-batching on and off, and
errors while the alias is moved under load.

Setup: a local SeaweedFS (its own temp dir and ports), two versions of a real VGG16 classifier
(transferflow.training.model.build_classifier: preprocessing, frozen VGG16, head; random weights, as a
trained model has the same cost) registered as `bench`, version 1 in production.

For --max-batch 32 (batching on), the same with --no-monitor (no monitoring windows recorded) and
--max-batch 1 (off, the baseline), one `transferflow serve` process each; at concurrency 1, 8 and
32, --rounds times, clients (threads, one keep-alive connection each) send --requests :classify
requests (a PNG of the model's size, decoded by the server as in training). The table shows
requests/s, p50 and p99 latency, images per model call and errors. The servers run side by side
and the rounds alternate between them, so load from elsewhere on the machine weighs on all alike.
The ratios, at concurrency 32 and measured in the same run: batching's throughput over the
baseline's, and recording's cost (the default server against --no-monitor).

Then, batching on, 32 clients in a loop while the alias is moved 5 times (promote v2, promote v1,
...), each move waited for until answers come from the new version: errors must be 0.

Goals: 0 errors; batching >= 3x the baseline's throughput at concurrency 32; recording costs <= 5%.

    .venv/bin/python bench/serve_bench.py [--size 32] [--requests 320] [--rounds 3] [--swaps 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME, CLASSES = "bench", [f"class_{i}" for i in range(10)]
CONCURRENCY = (1, 8, 32)
MODES = {"on (--max-batch 32)": ["--max-batch", "32"],  # recording windows, as by default
         "on, --no-monitor": ["--max-batch", "32", "--no-monitor"],
         "off (--max-batch 1)": ["--max-batch", "1"]}
BATCHING, UNRECORDED, BASELINE = MODES
GOAL_RATIO, GOAL_RECORDING_COST = 3.0, 0.05


def register_versions(size: int) -> None:
    """Two VGG16 classifiers with different random weights: bench:1 (production) and bench:2."""
    import keras

    from transferflow import storage
    from transferflow.registry import Registry
    from transferflow.registry.documents import TrainingRecord
    from transferflow.training.backbones import construct, get_spec
    from transferflow.training.model import build_classifier, save_to

    spec = get_spec("vgg16")
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = build_classifier(construct(spec, size, None), spec, len(CLASSES), dropout=0.2)
        uri = f"s3://{storage.bucket_name()}/staging/bench-{seed}.keras"
        digest, nbytes = save_to(model, uri)
        record = TrainingRecord.model_validate({"classes": CLASSES, "image_size": size})
        Registry().register(NAME, uri, digest, nbytes, record, f"bench-{seed}")
    Registry().promote(NAME, 1, "production", reason="serve bench")


class Server:
    """`transferflow serve bench@production` in a child process, ready when constructed."""

    def __init__(self, work: Path, flags: list[str]):
        from transferflow.devstack.s3server import free_ports

        self.port = free_ports(1)[0]
        self.log = work / f"serve{'-'.join(flags)}.log"
        command = [sys.executable, "-m", "transferflow.cli", "serve", f"{NAME}@production", "--port",
                   str(self.port), *flags, "--poll-seconds", "1"]
        with open(self.log, "wb") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if get(self.port, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        sys.exit(f"the server was not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Client:
    """One keep-alive connection sending :classify requests; records latency, version, errors."""

    def __init__(self, port: int, body: bytes):
        self.port, self.body = port, body
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def classify(self) -> tuple[float, int | None]:
        """(seconds, answering version or None for an error)."""
        started = time.perf_counter()
        try:
            self.connection.request("POST", f"/v1/models/{NAME}:classify", body=self.body,
                                    headers={"Content-Type": "image/png"})
            response = self.connection.getresponse()
            payload = response.read()
            version = json.loads(payload)["version"] if response.status == 200 else None
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            version = None
        return time.perf_counter() - started, version


def png(size: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def measure(port: int, body: bytes, concurrency: int, requests: int) -> dict:
    """requests :classify calls from `concurrency` clients, each with its own connection; with the
    latencies (ms), the errors, and the images per model call (from the server's /metrics)."""
    clients = [Client(port, body) for _ in range(concurrency)]
    for client in clients:  # connect and warm each connection outside the timing
        client.classify()
    share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]

    def run(index: int) -> list[tuple[float, int | None]]:
        return [clients[index].classify() for _ in range(share[index])]

    batches_before = batch_totals(port)
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [item for part in pool.map(run, range(concurrency)) for item in part]
    elapsed = time.perf_counter() - started
    images, calls = (after - before for after, before in zip(batch_totals(port), batches_before, strict=True))
    return {"rps": len(results) / elapsed, "latencies": [seconds * 1000 for seconds, _ in results],
            "errors": sum(v is None for _, v in results), "batch": images / max(1, calls)}


def batch_totals(port: int) -> tuple[float, float]:
    """(images, model calls) the server has run so far."""
    from prometheus_client.parser import text_string_to_metric_families

    text = get(port, "/metrics")[1].decode()
    samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if not sample.labels}
    return samples["transferflow_serve_batch_size_sum"], samples["transferflow_serve_batch_size_count"]


def swaps_under_load(port: int, body: bytes, swaps: int, concurrency: int = 32) -> dict:
    """Move the alias `swaps` times while `concurrency` clients send requests in a loop."""
    from transferflow.registry import Registry

    stop, answers = threading.Event(), []

    def loop() -> None:
        client = Client(port, body)
        while not stop.is_set():
            answers.append(client.classify())

    threads = [threading.Thread(target=loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    seconds = []
    try:
        for move in range(swaps):
            target = 2 if move % 2 == 0 else 1
            Registry().promote(NAME, target, "production", reason=f"serve bench swap {move + 1}")
            moved, seen = time.monotonic(), len(answers)
            while not any(v == target for _, v in answers[seen:]):
                if time.monotonic() - moved > 120:
                    sys.exit(f"swap {move + 1} to version {target} not seen after 120 s")
                time.sleep(0.05)
            seconds.append(time.monotonic() - moved)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return {"requests": len(answers), "errors": sum(v is None for _, v in answers), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="the VGG16 classifier's image size (default 32)")
    parser.add_argument("--requests", type=int, default=320, help="requests per concurrency level")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level and server (median kept)")
    parser.add_argument("--swaps", type=int, default=5, help="alias moves under load")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from transferflow.devstack import s3server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = s3server.start(work / "s3")
        os.environ.update({**server.env(), "TRANSFERFLOW_BUCKET": "serve-bench",
                           "TRANSFERFLOW_CACHE_DIR": str(work / "cache")})
        os.environ.pop("TRANSFERFLOW_SERVE_TOKEN", None)
        try:
            run(work, args)
        finally:
            s3server.stop_process(server.process)


def run(work: Path, args) -> None:
    from transferflow import storage

    storage.ensure_bucket("serve-bench")
    register_versions(args.size)
    body = png(args.size)
    servers = {label: Server(work, flags) for label, flags in MODES.items()}
    try:
        rows = compare(servers, body, args)
        for label in (BASELINE, UNRECORDED):  # they would follow the alias too, and load every version
            servers.pop(label).stop()
        swapped = swaps_under_load(servers[BATCHING].port, body, args.swaps)
    finally:
        for server in servers.values():
            server.stop()
    report(rows, swapped, args)


def compare(servers: dict[str, Server], body: bytes, args) -> dict:
    """Each concurrency level --rounds times, alternating the servers, so that whatever else the
    machine does meanwhile weighs on all alike; the median round's throughput is kept."""
    rows = {(label, concurrency): [] for label in servers for concurrency in CONCURRENCY}
    for concurrency in CONCURRENCY:
        for _ in range(args.rounds):
            for label, server in servers.items():
                rows[(label, concurrency)].append(measure(server.port, body, concurrency, args.requests))
    return {key: summary(rounds) for key, rounds in rows.items()}


def summary(rounds: list[dict]) -> dict:
    latencies = np.concatenate([r["latencies"] for r in rounds])
    return {"rps": float(np.median([r["rps"] for r in rounds])), "p50": np.percentile(latencies, 50),
            "p99": np.percentile(latencies, 99), "errors": sum(r["errors"] for r in rounds),
            "batch": float(np.mean([r["batch"] for r in rounds]))}


def report(rows: dict, swapped: dict, args) -> None:
    print(f"VGG16 classifier at {args.size} px (random weights, 10 classes), :classify with a {args.size} px "
          f"PNG, {args.requests} requests per level and round, median of {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs\n")
    print("| batching | concurrency | req/s | p50 ms | p99 ms | images per model call | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label in MODES:
        for concurrency in CONCURRENCY:
            row = rows[(label, concurrency)]
            print(f"| {label} | {concurrency} | {row['rps']:.1f} | {row['p50']:.1f} | {row['p99']:.1f} | "
                  f"{row['batch']:.1f} | {row['errors']} |")
    ratio = rows[(BATCHING, 32)]["rps"] / rows[(BASELINE, 32)]["rps"]
    print(f"\nbatching / no batching at concurrency 32: {ratio:.2f}x (goal >= {GOAL_RATIO:g}x)")
    cost = 1 - rows[(BATCHING, 32)]["rps"] / rows[(UNRECORDED, 32)]["rps"]
    print(f"recording monitoring windows at concurrency 32 costs {cost:.1%} of the throughput "
          f"(goal <= {GOAL_RECORDING_COST:.0%})")
    print(f"{args.swaps} alias moves under load (32 clients): {swapped['requests']} requests, "
          f"{swapped['errors']} errors (goal 0); the new version answered after "
          + ", ".join(f"{s:.1f}" for s in swapped["seconds"]) + " s (polling every 1 s)")


if __name__ == "__main__":
    main()
