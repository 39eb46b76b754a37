"""The engine ray tests' cluster: ONE local Ray cluster of 2 nodes (a head and a worker node,
1 CPU each, each a Ray node of its own) for the whole session, shared by every test here.

It starts after the session's S3 server, so its nodes' processes inherit the S3 settings, as a
real cluster's pods take them from their own environment (deployments/ray/raycluster.yaml). It
sets RAY_ADDRESS and leaves this process unconnected: the code under test connects as a run
does (transferflow.scaleout.cluster.Session) and disconnects after each stage.
"""

from __future__ import annotations

import os

import pytest

NODE_OBJECT_STORE = 192 << 20  # bytes per node: Ray's default (30% of memory each) is far too much


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A started 2-node cluster (ray.cluster_utils.Cluster); RAY_ADDRESS points at it."""
    pytest.importorskip("ray", reason="engine ray needs pip install -e '.[ray]' (make venv installs it)")
    from ray.cluster_utils import Cluster

    from transferflow.devstack.raycluster import free_port

    saved = {name: os.environ.get(name) for name in ("RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED")}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no telemetry (nor its queries to a Prometheus)
    node = {"num_cpus": 1, "object_store_memory": NODE_OBJECT_STORE}
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={**node, "include_dashboard": False, "resources": {"node-0": 1},
                                      "dashboard_port": free_port()})  # not 8265: clusters side by side
    try:
        cluster.add_node(**node, resources={"node-1": 1})
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        yield cluster
    finally:
        _disconnect()
        cluster.shutdown()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def _disconnect() -> None:
    """A connection a test left open would outlive the cluster it points at."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
