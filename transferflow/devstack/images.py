"""Container images: the wheelhouse each role installs from, the builds, and a smoke test.

    python -m transferflow.devstack.images image [--targets trainer,serve] [--base IMAGE] [--gpu-base IMAGE]
    python -m transferflow.devstack.images wheelhouse [--roles trainer,serve] [--python 3.13]
    python -m transferflow.devstack.images build [--targets trainer,serve] [--base IMAGE]
    python -m transferflow.devstack.images smoke [--trainer IMAGE] [--serve IMAGE]

`make image` and deployments/images/build-offline.sh call these. A role's wheels are exactly what
uv.lock pins for it, hashes included, for the Python of the role's base image, so that a build reads
no package index and installs what the tests ran against.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = ROOT / "build" / "wheelhouse"
# Never imported by `transferflow serve` (tests/unit/test_images.py checks it in a subprocess).
SERVE_PRUNED = ("prefect", "scipy", "scikit-learn", "matplotlib")
# Wheels that run on glibc 2.17 to 2.39: trixie has 2.41, Ubuntu 24.04 (the CUDA base) 2.39.
PLATFORMS = ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)), "linux_x86_64", "any")
DOCKERFILE_BASES = {"BASE": "python:3.13-slim-trixie", "GPU_BASE": "nvidia/cuda:12.5.1-base-ubuntu24.04"}


@dataclass(frozen=True)
class Role:
    """An image's share of the lock: the extras it installs, the packages it leaves out, and the
    Dockerfile's base argument it is built on with that base's Python."""

    extras: tuple[str, ...] = ()
    prune: tuple[str, ...] = ()
    base: str = "BASE"
    python: str = "3.13"


# CPU images take tensorflow-cpu (the [cpu] extra) in place of tensorflow: the same release
# without the CUDA libraries, about 1 GB less installed. GPU images keep tensorflow, with its
# [and-cuda] wheels; Ubuntu 24.04's python3 is 3.12.
ROLES = {
    "trainer": Role(("cpu", "export"), ("tensorflow",)),  # any flow a cpu worker may run, --export too
    "gpu": Role(("export", "gpu"), base="GPU_BASE", python="3.12"),
    "serve": Role(("cpu", "serve"), ("tensorflow", *SERVE_PRUNED)),
    "ray": Role(("gpu", "ray"), base="GPU_BASE", python="3.12"),  # the KubeRay workers are GPU nodes
}


def docker() -> str:
    """The docker CLI: $DOCKER, else `docker`. BuildKit is needed (it skips the other roles' stages):
    a CLI without its buildx plugin (a newer static client next to Debian's docker.io) cannot use
    it, so then Debian's own /usr/bin/docker, whose 20.10 CLI has BuildKit built in, is used."""
    chosen = os.environ.get("DOCKER")
    if chosen:
        return chosen
    has_buildx = subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0
    return "docker" if has_buildx or not Path("/usr/bin/docker").exists() else "/usr/bin/docker"


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def image_tags(target: str) -> list[str]:
    """transferflow-<target>:<version> (what the manifests name) and :<version>-<git sha>."""
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip() or "nogit"
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    name = f"transferflow-{target}"
    return [f"{name}:{version()}", f"{name}:{version()}-{sha}{'-dirty' if dirty.strip() else ''}"]


def _uv() -> str:
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if not found:
        sys.exit("uv is missing: it comes with the dev extra (make venv), or pip install uv")
    return found


def requirements(role: Role, python: str) -> str:
    """The role's pinned requirements with hashes, exported from uv.lock (which must be current),
    for CPython `python` on x86-64 Linux: the lock is universal, and pip download would judge its
    markers by the Python running it rather than the image's."""
    command = [_uv(), "export", "--frozen", "--no-emit-project", "--no-header", "--no-annotate",
               *(f"--extra={extra}" for extra in role.extras), *(f"--prune={name}" for name in role.prune)]
    text = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return for_environment(text, python)


def for_environment(text: str, python: str) -> str:
    """The entries of an exported requirements file whose markers hold on Linux x86-64 CPython
    `python` (X.Y), without their markers."""
    from packaging.markers import Marker

    environment = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    blocks, kept = [], []
    for line in text.splitlines():
        if line and not line[0].isspace():
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    for block in blocks:
        requirement, _, marker = block[0].rstrip(" \\").partition(";")
        if not marker.strip() or Marker(marker.strip()).evaluate(environment):
            kept += [f"{requirement.strip()} \\", *block[1:]]
    return "\n".join(kept) + "\n"


def wheelhouse(roles: list[str], python_override: str | None = None) -> None:
    """Download each role's wheels for its base's CPython on x86-64 Linux, and transferflow's own."""
    own = _project_wheel()
    for name in roles:
        target = WHEELHOUSE / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        python = python_override or ROLES[name].python
        (target / "requirements.txt").write_text(requirements(ROLES[name], python))
        (target / "python-version").write_text(python + "\n")  # install-role.sh compares it with the base's
        tag = python.replace(".", "")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--require-hashes", "--python-version", python, "--implementation", "cp",
                   "--abi", f"cp{tag}", "--abi", "abi3", "--abi", "none",
                   *(f"--platform={platform}" for platform in PLATFORMS),
                   "-d", str(target), "-r", str(target / "requirements.txt")]
        print(f"wheelhouse {name}: downloading for CPython {python} ...", flush=True)
        subprocess.run(command, check=True)
        shutil.copy2(own, target / own.name)
        size = sum(path.stat().st_size for path in target.iterdir()) / 2**20
        print(f"wheelhouse {name}: {len(list(target.glob('*.whl')))} wheels, {size:.0f} MiB in {target}")


def _project_wheel() -> Path:
    out = Path(tempfile.mkdtemp(prefix="transferflow-wheel-"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True)
    return next(out.glob("transferflow-*.whl"))


def build(targets: list[str], bases: dict[str, str]) -> None:
    """docker build each target from the wheelhouse, tagged with the version and the git sha."""
    for target in targets:
        if not (WHEELHOUSE / target / "requirements.txt").exists():
            sys.exit(f"no wheelhouse for {target}: run `{sys.executable} -m transferflow.devstack.images "
                     f"wheelhouse --roles {target}` first")
        tags = image_tags(target)
        arguments = [f"--build-arg={key}={value}" for key, value in bases.items() if value]
        command = [docker(), "build", *arguments, "--target", target, *(f"--tag={tag}" for tag in tags),
                   str(ROOT)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
        print(f"built {', '.join(tags)}: {_image_size(tags[0])}")


def image(targets: list[str], bases: dict[str, str], python_override: str | None = None) -> list[str]:
    """Wheelhouse and build for each target whose base image is here or can be pulled; the others
    are skipped with a message (a CUDA base cannot be had without a registry). Returns the skipped."""
    skipped = []
    for target in targets:
        base = bases.get(ROLES[target].base) or DOCKERFILE_BASES[ROLES[target].base]
        if not _have_image(base):
            option = ROLES[target].base.lower().replace("_", "-")
            print(f"skipping {target}: its base {base} is neither here nor pullable: pull or import it, "
                  f"or name another (make image {ROLES[target].base}=IMAGE, --{option} IMAGE)", flush=True)
            skipped.append(target)
            continue
        wheelhouse([target], python_override)
        build([target], bases)
    return skipped


def _have_image(name: str) -> bool:
    """True when the daemon has the image or pulls it now."""
    found = subprocess.run([docker(), "image", "inspect", name], capture_output=True)
    if found.returncode == 0:
        return True
    print(f"$ {docker()} pull {name}", flush=True)
    return subprocess.run([docker(), "pull", name], capture_output=True).returncode == 0


def _image_size(tag: str) -> str:
    found = subprocess.run([docker(), "image", "inspect", "--format", "{{.Size}}", tag],
                           capture_output=True, text=True)
    return f"{int(found.stdout) / 1e6:.0f} MB" if found.returncode == 0 else "unknown size"


def _docker(*args: str, env: dict[str, str] | None = None, check: bool = True,
            capture: bool = False) -> subprocess.CompletedProcess:
    """docker run on the host's network (the local S3 server listens on loopback only)."""
    pairs = [f"--env={key}" for key in (env or {})]
    command = [docker(), "run", "--rm", "--network=host", *pairs, *args]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, check=check, env={**os.environ, **(env or {})}, text=True,
                          capture_output=capture)


def smoke(trainer: str, serve: str) -> None:
    """The trainer image trains and registers into a SeaweedFS outside it; the serving image
    serves that version and answers /readyz from the host."""
    from transferflow.devstack import s3server
    from transferflow.devstack.samples import write_dataset, write_random_weights

    work = Path(tempfile.mkdtemp(prefix="transferflow-smoke-"))
    server = s3server.start(work / "s3")
    try:
        env = {**server.env(), "TRANSFERFLOW_BUCKET": "smoke"}
        os.environ.update(env)  # this process reads the registry back with the same settings
        data = work / "data"
        write_dataset(data / "shapes", classes=3, per_class=40)  # make demo's data: learnable at 32 px
        write_random_weights(data / "vgg16.weights.h5")
        data.chmod(0o755)
        _docker(trainer, "--help")
        started = time.monotonic()
        _docker(f"--volume={data}:/data:ro", trainer, "train", "--dataset", "/data/shapes",
                "--weights", "/data/vgg16.weights.h5", "--image-size", "32", "--head-epochs", "5",
                "--fine-tune-epochs", "1", "--model-name", "smoke", env=env)
        print(f"trained and registered in the trainer image in {time.monotonic() - started:.0f}s")
        _show_registered("smoke@latest")
        _serve_ready(serve, env)
    finally:
        s3server.stop_process(server.process)
        shutil.rmtree(work, ignore_errors=True)


def _show_registered(reference: str) -> None:
    """Read the version back from the host: the registry outside the image holds it."""
    from transferflow.registry import Registry

    registry = Registry()
    name, number = registry.resolve(reference)
    libraries = (registry.metadata(name, number) or {}).get("library_versions", {})
    print(f"registered {name}:{number} (read from the host), trained with {libraries}")


def _serve_ready(image: str, env: dict[str, str], timeout: float = 180) -> None:
    from transferflow.devstack.s3server import free_ports

    port = free_ports(1)[0]
    name = f"transferflow-smoke-serve-{port}"
    _docker("--detach", f"--name={name}", image, "smoke@latest", "--host", "127.0.0.1",
            "--port", str(port), env=env)
    try:
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                    status = answer.status
                    body = json.loads(answer.read() or b"{}")
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                time.sleep(2)
        if status != 200:
            logs = subprocess.run([docker(), "logs", "--tail", "40", name], capture_output=True, text=True)
            sys.exit(f"the serving image did not answer /readyz with 200 within {timeout:.0f}s:\n"
                     f"{logs.stdout}{logs.stderr}")
        print(f"/readyz from the host: {status} {body}")
    finally:
        subprocess.run([docker(), "rm", "--force", name], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferflow.devstack.images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    both = commands.add_parser("image", help="wheelhouse and build each target whose base is at hand")
    house = commands.add_parser("wheelhouse", help="download each role's locked wheels")
    house.add_argument("--roles", dest="targets", default=",".join(ROLES))
    images = commands.add_parser("build", help="docker build the targets")
    for command in (both, house):
        command.add_argument("--python", default=None,
                             help="the base image's CPython X.Y (default: 3.13 on BASE, 3.12 on GPU_BASE)")
    for command in (both, images):
        command.add_argument("--targets", default=",".join(ROLES))
        command.add_argument("--base", default="", help=f"CPU base (default {DOCKERFILE_BASES['BASE']})")
        command.add_argument("--gpu-base", default="",
                             help=f"CUDA base (default {DOCKERFILE_BASES['GPU_BASE']})")
    check = commands.add_parser("smoke", help="train in the trainer image, serve in the serving image")
    check.add_argument("--trainer", default=None, help="default: transferflow-trainer:<version>")
    check.add_argument("--serve", default=None, help="default: transferflow-serve:<version>")
    args = parser.parse_args(argv)
    if args.command == "smoke":
        smoke(args.trainer or image_tags("trainer")[0], args.serve or image_tags("serve")[0])
        return 0
    targets = _names(args.targets)
    if args.command == "wheelhouse":
        wheelhouse(targets, args.python)
        return 0
    bases = {"BASE": args.base, "GPU_BASE": args.gpu_base}
    if args.command == "build":
        build(targets, bases)
    else:
        skipped = image(targets, bases, args.python)
        built = [target for target in targets if target not in skipped]
        print(f"built: {', '.join(built) or 'none'}; skipped: {', '.join(skipped) or 'none'}")
    return 0


def _names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ROLES))
    if unknown:
        sys.exit(f"unknown role(s) {unknown}: choose from {', '.join(ROLES)}")
    return names


if __name__ == "__main__":
    sys.exit(main())
