"""The Ray cluster a stage uses (engine ray): the one at RAY_ADDRESS, or a local one started for
the stage and stopped after it; and its facts (nodes, CPUs, GPUs, workers) for the metadata.

A `Session` connects on first use, not on creation, so a stage that finds its result already
stored (a prepared dataset, stored features) never starts a cluster. A connection that is already
open in this process (the flow's, a test's) is reused and left open.
"""

from __future__ import annotations

import importlib.util
import logging
import os

from transferflow.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'transferflow[ray]' (make venv installs it)"
LOCAL = "local"  # ray.init's address for "start a new local cluster"


def ray_installed() -> bool:
    """Whether Ray can be imported here, without importing it (a second or more)."""
    return importlib.util.find_spec("ray") is not None


def require_ray(label: str = "engine"):
    """The ray module, or a ConfigError naming the extra to install."""
    if not ray_installed():
        raise ConfigError(f"{label} ray needs Ray, which is not installed here: {INSTALL_HINT}, "
                          f"or pass {label} local")
    import ray

    return ray


def cluster_address() -> str:
    """The cluster this run uses: RAY_ADDRESS, else "local" (a cluster started for the run)."""
    return os.environ.get("RAY_ADDRESS", "").strip() or LOCAL


class Session:
    """A connection to the cluster, opened by connect() and closed by close() (or the `with`
    block's end). Closing stops the local cluster this session started; a cluster at RAY_ADDRESS
    keeps running, and a connection opened before this session stays open."""

    def __init__(self, logger=log):
        self.logger = logger
        self.opened = False
        self.closers: list = []  # what must end before the connection does (a job's iterator)

    def connect(self):
        """The ray module, connected: reuses an open connection, else opens one."""
        ray = require_ray()
        if not ray.is_initialized():
            address = cluster_address()
            started = {"include_dashboard": False} if address == LOCAL else {}  # refused for a running one
            ray.init(address=address, configure_logging=False, **started)
            self.opened = True
            where = "a local cluster started for this stage" if address == LOCAL else f"RAY_ADDRESS {address}"
            self.logger.info("ray: connected to %s: %s", where, describe(cluster_facts()))
        return ray

    def close(self) -> None:
        while self.closers:
            self.closers.pop()()
        if self.opened:
            import ray

            ray.shutdown()
            self.opened = False

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cluster_facts(num_workers: int | None = None, gpus_per_worker: float | None = None) -> dict:
    """What the cluster is made of, for the metadata and the report: alive nodes, their CPUs and
    GPUs, and (when given) the workers a training asks for. Needs a connection (Session.connect)."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    total = ray.cluster_resources()
    facts = {"engine": "ray", "address": cluster_address(), "ray": ray.__version__, "nodes": len(nodes),
             "cpus": int(total.get("CPU", 0)), "gpus": int(total.get("GPU", 0))}
    if num_workers is not None:
        facts["workers"] = num_workers
    if gpus_per_worker is not None:
        facts["gpus_per_worker"] = gpus_per_worker
    return facts


def actors_for(num_workers: int, tasks: int) -> int:
    """Actors for a Ray Data job: num_workers, but no more than its tasks or the cluster's CPUs (a
    fixed pool larger than the cluster would wait for resources that never come)."""
    import ray

    return max(1, min(num_workers, tasks, int(ray.cluster_resources().get("CPU", 1))))


def describe(facts: dict) -> str:
    """'2 nodes, 2 CPUs, 0 GPUs' (and the workers, when known)."""
    text = f"{facts['nodes']} nodes, {facts['cpus']} CPUs, {facts['gpus']} GPUs"
    return text + (f", {facts['workers']} workers" if "workers" in facts else "")


def task_error(exc: BaseException) -> BaseException:
    """The transferflow error behind a failed Ray task (Ray wraps what a worker raised), so the
    user sees the message that names the input and the fix; else the error itself."""
    from transferflow.errors import TransferflowError

    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TransferflowError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return exc


def raise_unwrapped(exc: BaseException):
    """Raise task_error(exc): a worker's transferflow error as itself, anything else as it came."""
    found = task_error(exc)
    if found is exc:
        raise exc
    raise found from exc
