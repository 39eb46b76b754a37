"""The local Prefect stack: a `prefect server` (SQLite, loopback), the cpu and gpu
process work pools, one worker per pool, the deployments in deployments/, and, when prefixes
are given (--watch), the dataset watcher (`transferflow watch`) that starts retrain/on-data.

    python -m transferflow.devstack.stack up | down | status | server | pools | workers | deploy | ui | logs

Used by the Makefile (stack-up, server, pools, ...) and by the deployment tests.
State lives in .local/prefect/ (database, pid files, logs). Prefect is driven
through its CLI and HTTP API, so this module imports no Prefect.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from transferflow import storage
from transferflow.devstack import daemons
from transferflow.errors import StorageError

PROJECT_DIR = Path(__file__).resolve().parents[2]  # transferflow/devstack/stack.py -> the checkout
DEPLOYMENTS_FILE = PROJECT_DIR / "deployments" / "prefect.yaml"
POOLS = {"cpu": "cpu-process.json", "gpu": "gpu-process.json"}
WORKER_LIMITS = {"cpu": 4, "gpu": 1}  # one training run at a time per GPU worker
SERVER_TIMEOUT_S = 120
API_ATTEMPTS = 5
WORKER_TIMEOUT_S = 90


@dataclass
class Stack:
    home: Path = Path(".local/prefect")
    port: int = 4200
    worker_env: dict[str, str] = field(default_factory=dict)  # extra settings for workers
    poll_seconds: int = 5  # how often workers ask for work
    remote_api_url: str | None = None  # a Prefect server elsewhere (workers, pools, deploy)
    watch: list[str] = field(default_factory=list)  # s3:// prefixes the watcher lists
    debounce_s: float = 600.0  # the watcher's quiet time before it announces a change
    watch_interval_s: float = 30.0

    @property
    def api_url(self) -> str:
        return self.remote_api_url or f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The environment for every Prefect process of this stack."""
        return {
            **os.environ, "PREFECT_HOME": str(self.home.resolve()), "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port), "PREFECT_UI_API_URL": self.api_url,
            "PREFECT_CLI_PROMPT": "false", "TRANSFERFLOW_PROJECT_DIR": str(PROJECT_DIR),
        }

    def pid_file(self, name: str) -> Path:
        return self.home / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.home / f"{name}.log"


def prefect_cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "prefect"), *args]


def api(stack: Stack, method: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if os.environ.get("PREFECT_API_KEY"):  # Prefect Cloud or a server behind auth
        headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
    request = urllib.request.Request(f"{stack.api_url}{path}", data=data, method=method, headers=headers)
    for attempt in range(API_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            # A busy SQLite-backed server answers 503 now and then; anything else is an answer.
            if exc.code not in (502, 503, 504) or attempt == API_ATTEMPTS - 1:
                raise
        time.sleep(0.5 * 2 ** attempt)


def start_server(stack: Stack) -> None:
    """`prefect server start` on loopback with its SQLite database under stack.home."""
    stack.home.mkdir(parents=True, exist_ok=True)
    if daemons.read_pid(stack.pid_file("server")):
        print(f"Prefect server already running at {stack.ui_url}")
        return
    from transferflow.devstack.s3server import port_is_free

    if not port_is_free(stack.port):  # else the health check would answer for someone else's server
        raise RuntimeError(f"port {stack.port} is taken by another process: stop it, or use "
                           "PREFECT_PORT=<free port> (make stack-up PREFECT_PORT=4201)")
    log = stack.log_file("server")
    process = daemons.start_checked(
        prefect_cli("server", "start", "--host", "127.0.0.1", "--port", str(stack.port)),
        what="prefect server", ready=lambda: api(stack, "GET", "/health") is True,
        timeout=SERVER_TIMEOUT_S, log_path=log, env=stack.env(), pid_file=stack.pid_file("server"))
    print(f"Prefect server ready at {stack.ui_url} (pid {process.pid}, log {log})")


def create_pools(stack: Stack) -> None:
    """Create or update the cpu and gpu process pools from deployments/pools/*.json."""
    for pool, template in POOLS.items():
        command = prefect_cli("work-pool", "create", pool, "--type", "process", "--overwrite",
                              "--base-job-template", str(PROJECT_DIR / "deployments" / "pools" / template))
        result = subprocess.run(command, env=stack.env(), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"creating work pool {pool} failed:\n{result.stdout}{result.stderr}")
    api(stack, "PATCH", "/work_pools/gpu/queues/default", {"concurrency_limit": WORKER_LIMITS["gpu"]})
    print("work pools ready: cpu, gpu (gpu queue: 1 run at a time)")


def worker_env(stack: Stack) -> dict[str, str]:
    """Workers need the object store too: the environment's, else the local one's."""
    storage.load_local_env()
    return {**stack.env(), **stack.worker_env,
            "PREFECT_WORKER_QUERY_SECONDS": str(stack.poll_seconds),
            "PREFECT_WORKER_HEARTBEAT_SECONDS": str(max(stack.poll_seconds, 5))}


def check_storage() -> None:
    """Workers read the object store from their first run: make sure it serves reads now. A store
    that has just started answers InternalError until its volumes are loaded; storage's client
    waits that out, and names the cause if it lasts."""
    storage.load_local_env()
    if not storage.configured():
        return  # start_worker warns about the missing settings
    try:
        storage.check_readable(storage.bucket_name())
    except StorageError as exc:
        raise RuntimeError(f"the object store does not serve reads: {exc}") from None
    print(f"object store ready: s3://{storage.bucket_name()} at {storage.endpoint_label()}")


def start_worker(stack: Stack, pool: str) -> None:
    name = f"worker-{pool}"
    if daemons.read_pid(stack.pid_file(name)):
        print(f"{name} already running")
        return
    env = worker_env(stack)
    if not (env.get("AWS_ENDPOINT_URL") or env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE")):
        print(f"warning: {name} starts without S3 settings; run `make storage-up` first", file=sys.stderr)
    log = stack.log_file(name)
    worker_name = f"{pool}-{os.uname().nodename}-{os.getpid()}-{int(time.time())}"
    command = prefect_cli("worker", "start", "--pool", pool, "--type", "process", "--name", worker_name,
                          "--limit", str(WORKER_LIMITS[pool]))
    process = daemons.start_checked(
        command, what=name, ready=lambda: _worker_online(stack, pool, worker_name),
        timeout=WORKER_TIMEOUT_S, log_path=log, env=env, pid_file=stack.pid_file(name), cwd=PROJECT_DIR)
    print(f"{name} polling pool {pool} as {worker_name} (pid {process.pid}, log {log})")


def _worker_online(stack: Stack, pool: str, worker_name: str) -> bool:
    """This very worker has sent a heartbeat (older records of other workers don't count)."""
    workers = api(stack, "POST", f"/work_pools/{pool}/workers/filter",
                  {"workers": {"status": {"any_": ["ONLINE"]}}})
    return any(w["name"] == worker_name for w in workers)


def deploy(stack: Stack) -> None:
    """`prefect deploy --all` from the project root with deployments/prefect.yaml."""
    command = prefect_cli("--no-prompt", "deploy", "--all", "--prefect-file", str(DEPLOYMENTS_FILE))
    result = subprocess.run(command, env=stack.env(), cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    names = [f"{d['flow_name']}/{d['name']}" for d in deployments(stack)]
    print(f"deployed: {', '.join(sorted(names))}")


def deployments(stack: Stack) -> list[dict]:
    found = api(stack, "POST", "/deployments/filter", {})
    flows = {f["id"]: f["name"] for f in api(stack, "POST", "/flows/filter", {})}
    return [{**d, "flow_name": flows.get(d["flow_id"], "?")} for d in found]


def start_watcher(stack: Stack) -> None:
    """`transferflow watch` over stack.watch in the background (after deploy: the on-data trigger
    must exist before the first event). Its state is in the bucket, so a restart loses nothing."""
    if not stack.watch:
        return
    if daemons.read_pid(stack.pid_file("watch")):
        print("watcher already running")
        return
    command = [sys.executable, "-m", "transferflow.cli", "watch", *stack.watch,
               "--debounce", str(stack.debounce_s), "--interval", str(stack.watch_interval_s)]
    log = stack.log_file("watch")
    offset = log.stat().st_size if log.exists() else 0  # the log is appended to: only new lines count

    def ready() -> bool:
        with open(log, "rb") as handle:
            handle.seek(offset)
            return b"watching " in handle.read()

    process = daemons.start_checked(command, what="transferflow watch", ready=ready, timeout=WORKER_TIMEOUT_S,
                                    log_path=log, env=worker_env(stack), pid_file=stack.pid_file("watch"),
                                    cwd=PROJECT_DIR)
    print(f"watcher on {', '.join(stack.watch)}: debounce {stack.debounce_s:g}s (pid {process.pid}, "
          f"log {log})")


def up(stack: Stack) -> None:
    start_server(stack)
    create_pools(stack)
    check_storage()
    for pool in POOLS:
        start_worker(stack, pool)
    deploy(stack)
    start_watcher(stack)
    print(f"\nPrefect UI: {stack.ui_url}\nTrigger a run:  make trigger PARAMS='{{\"dataset\": \"...\"}}'")


def down(stack: Stack) -> None:
    if daemons.read_pid(stack.pid_file("server")):
        crashed = crash_active_runs(stack)
        if crashed:
            print(f"marked {crashed} unfinished flow run(s) Crashed: their workers stop now")
    # The watcher and the workers together (a worker that has run flows was seen to take its whole
    # 20 s grace to exit, so one after the other took 40 s), then the server they report to.
    for names in (("watch", "worker-gpu", "worker-cpu"), ("server",)):
        pids = daemons.stop_pid_files([stack.pid_file(name) for name in names])
        for name, pid in zip(names, pids, strict=True):
            if pid or name != "watch":  # the watcher runs only when prefixes were given
                print(f"stopped {name} (pid {pid})" if pid else f"{name} was not running")


def crash_active_runs(stack: Stack) -> int:
    """Runs in flight on this stack's pools die with its workers. Say so in their state, or
    a RUNNING ghost would hold the gpu queue's only slot after the next stack-up."""
    query = {"flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}},
             "work_pools": {"name": {"any_": sorted(POOLS)}}}
    try:
        runs = api(stack, "POST", "/flow_runs/filter", query)
        for run in runs:
            api(stack, "POST", f"/flow_runs/{run['id']}/set_state",
                {"state": {"type": "CRASHED", "message": "the local stack was stopped (make stack-down)"},
                 "force": True})
    except OSError as exc:  # the server is going away anyway; report, don't block the stop
        print(f"warning: could not update unfinished runs: {exc}", file=sys.stderr)
        return 0
    return len(runs)


def status(stack: Stack) -> int:
    running = 0
    for name in ("server", "worker-cpu", "worker-gpu"):
        pid = daemons.read_pid(stack.pid_file(name))
        running += pid is not None
        print(f"{name:11} {f'running (pid {pid})' if pid else 'stopped'}")
    watcher = daemons.read_pid(stack.pid_file("watch"))
    print(f"{'watch':11} {f'running (pid {watcher})' if watcher else 'not started (make stack-up WATCH=s3://...)'}")
    print(f"UI          {stack.ui_url}")
    print(f"API         {stack.api_url}")
    return 0 if running == 3 else 1


def logs(stack: Stack, lines: int = 40) -> None:
    for name in ("server", "worker-cpu", "worker-gpu", "watch"):
        if name == "watch" and not stack.log_file(name).exists():
            continue
        print(f"==> {stack.log_file(name)} <==")
        print("\n".join(daemons.tail(stack.log_file(name), 20000).splitlines()[-lines:]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferflow.devstack.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "server", "pools", "worker",
                                           "deploy", "ui", "logs"])
    parser.add_argument("--pool", choices=sorted(POOLS), help="for `worker`: the pool to poll")
    parser.add_argument("--home", type=Path, default=Path(".local/prefect"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    parser.add_argument("--watch", nargs="*", default=[], metavar="s3://BUCKET/PREFIX/",
                        help="for `up`: start the dataset watcher on these prefixes (retrain/on-data)")
    parser.add_argument("--debounce", type=float, default=600.0, metavar="SECONDS",
                        help="the watcher's quiet time after the last change (default 600)")
    args = parser.parse_args(argv)
    if args.action == "worker" and not args.pool:
        parser.error("worker needs --pool cpu or --pool gpu")
    remote = os.environ.get("PREFECT_API_URL") if args.action not in ("server", "up", "down") else None
    stack = Stack(home=args.home, port=args.port, remote_api_url=remote or None,
                  watch=[prefix for item in args.watch for prefix in item.split(",") if prefix],
                  debounce_s=args.debounce)
    actions = {
        "up": up, "down": down, "server": start_server, "pools": create_pools, "deploy": deploy,
        "worker": lambda s: start_worker(s, args.pool), "logs": logs, "ui": lambda s: print(s.ui_url),
    }
    try:
        if args.action == "status":
            return status(stack)
        actions[args.action](stack)
        return 0
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
