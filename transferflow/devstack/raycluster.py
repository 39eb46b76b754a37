"""A local multi-node Ray cluster on this machine, to try engine ray (`make ray-up`): a head and N
worker nodes, each a Ray node of its own (its raylet, object store, CPUs and a `node-<i>` resource),
started by Ray's own test utility (ray.cluster_utils.Cluster) in one background process.

    python -m transferflow.devstack.raycluster up [--dir .local/ray] [--workers 2] [--cpus-per-node 1]
    python -m transferflow.devstack.raycluster down | status

`up` prints the RAY_ADDRESS to export. `down` stops the background process, which shuts its nodes
down, then checks every process of the cluster by pid and start time and kills any that is left:
no Ray process of it survives. The nodes inherit this environment, and the local store's settings
(.local/s3.env) when no object store is configured, so their workers reach the driver's S3.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from transferflow import storage
from transferflow.devstack import daemons

START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
OBJECT_STORE_MB = 256  # per node: Ray's default (30% of memory per node) is far too much for 3 nodes


def up(folder: Path, workers: int = 2, cpus_per_node: int = 1,
       object_store_mb: int = OBJECT_STORE_MB) -> dict:
    """Start the cluster unless it runs already; returns its facts (address, nodes, pid)."""
    running = status(folder)
    if running:
        return running
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cluster.json").unlink(missing_ok=True)
    storage.load_local_env()  # before the nodes start: they inherit this environment
    command = [sys.executable, "-m", "transferflow.devstack.raycluster", "serve", "--dir", str(folder),
               "--workers", str(workers), "--cpus-per-node", str(cpus_per_node),
               "--object-store-mb", str(object_store_mb)]
    daemons.start_checked(command, what="the local Ray cluster", ready=lambda: _facts(folder) is not None,
                          timeout=START_TIMEOUT_S, log_path=folder / "cluster.log", env=_node_env(),
                          pid_file=folder / "cluster.pid")
    return _facts(folder)


def _node_env() -> dict[str, str]:
    """The nodes' environment: this one, without Ray's usage telemetry unless asked for."""
    return {"RAY_USAGE_STATS_ENABLED": "0", **os.environ}


def status(folder: Path) -> dict | None:
    """The running cluster's facts, or None when it does not run."""
    if daemons.read_pid(folder / "cluster.pid") is None:
        return None
    return _facts(folder)


def down(folder: Path) -> list[int]:
    """Stop the cluster; returns the pids that had to be killed after the graceful stop (none when
    Ray shut its nodes down itself). Afterwards no process of the cluster runs."""
    pid = daemons.read_pid(folder / "cluster.pid")
    if pid is None:
        (folder / "cluster.pid").unlink(missing_ok=True)
        return []
    tree = process_tree(pid)  # its nodes' processes; Ray's workers lead process groups of their own
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while is_running(pid, tree[pid]) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = [child for child, started in tree.items() if is_running(child, started)]
    for child in killed:
        os.kill(child, signal.SIGKILL)
    (folder / "cluster.pid").unlink(missing_ok=True)
    (folder / "cluster.json").unlink(missing_ok=True)
    return killed


def process_tree(root: int) -> dict[int, str]:
    """`root` and all its descendants, as pid -> start time (so a reused pid is not taken for one)."""
    daemons.require_proc()
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            parents[int(entry.name)] = (int(fields[1]), fields[19])
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in parents and pid not in tree:
            tree[pid] = parents[pid][1]
            frontier += [child for child, (parent, _) in parents.items() if parent == pid]
    return tree


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, ... (field 22, start time, is [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def is_running(pid: int, started: str) -> bool:
    """Whether `pid` is still the process that started at `started` (and not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def _facts(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "cluster.json").read_text())
    except (OSError, ValueError):
        return None


def serve(folder: Path, workers: int, cpus_per_node: int, object_store_mb: int) -> int:
    """The background process: start the nodes, write cluster.json, wait for SIGTERM, shut down."""
    from ray.cluster_utils import Cluster

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    node = {"num_cpus": cpus_per_node, "object_store_memory": object_store_mb << 20}
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        **node, "resources": {"node-0": 1}, "include_dashboard": False, "dashboard_port": free_port()})
    try:
        for index in range(1, workers + 1):
            cluster.add_node(**node, resources={f"node-{index}": 1})
        cluster.wait_for_nodes()
        facts = {"address": cluster.address, "nodes": workers + 1, "cpus": (workers + 1) * cpus_per_node,
                 "pid": os.getpid()}
        (folder / "cluster.json").write_text(json.dumps(facts))
        print(f"ray cluster ready at {cluster.address}: {facts['nodes']} nodes", flush=True)
        stop.wait()
    finally:
        cluster.shutdown()
    return 0


def free_port() -> int:
    """A free loopback port, for a head's dashboard: Ray's fixed 8265 collides between clusters."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferflow.devstack.raycluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "serve"])
    parser.add_argument("--dir", type=Path, default=Path(".local/ray"), help="pid file, log, cluster.json")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes besides the head (default 2)")
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--object-store-mb", type=int, default=OBJECT_STORE_MB)
    args = parser.parse_args(argv)
    if args.action == "serve":
        return serve(args.dir, args.workers, args.cpus_per_node, args.object_store_mb)
    try:
        return _report(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _report(args) -> int:
    if args.action == "up":
        facts = up(args.dir, args.workers, args.cpus_per_node, args.object_store_mb)
        print(f"ray cluster: {facts['nodes']} nodes, {facts['cpus']} CPUs (pid {facts['pid']}, log in "
              f"{args.dir}/cluster.log)\n  export RAY_ADDRESS={facts['address']}")
    elif args.action == "down":
        running = status(args.dir)
        killed = down(args.dir)
        print("ray cluster stopped" + (f"; killed {len(killed)} processes it left" if killed else "")
              if running else "the local ray cluster is not running")
    else:
        facts = status(args.dir)
        print(f"ray cluster at {facts['address']}: {facts['nodes']} nodes" if facts else "not running")
        return 0 if facts else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
