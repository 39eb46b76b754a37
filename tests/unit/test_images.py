"""Images: the manifests name the tags `make image` builds (transferflow-<target>:<version>), each a
Dockerfile target; the CPU images' tensorflow-cpu is the locked tensorflow; the serving image's
pruned packages are never imported by `transferflow serve`; a role's wheels are chosen for its base."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from transferflow.devstack.images import DOCKERFILE_BASES, ROLES, SERVE_PRUNED, for_environment, version

ROOT = Path(__file__).resolve().parents[2]
IMAGE = re.compile(r"\btransferflow(?:-[a-z]+)?:[\w.-]+")


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), flags=re.M))


def test_the_manifests_name_the_images_make_image_builds_at_pyprojects_version():
    files = [*(ROOT / "deployments").rglob("*.yaml"), *(ROOT / "deployments").rglob("*.json")]
    named = {(path.relative_to(ROOT).as_posix(), found)
             for path in files for found in IMAGE.findall(path.read_text())}
    wanted = {f"transferflow-{role}:{version()}" for role in ("serve", "ray", "gpu")}
    assert wanted <= {found for _, found in named}
    for path, found in named:
        name, tag = found.split(":")
        assert tag == version(), f"{path} names {found}: tag it {version()}, pyproject's version"
        assert name.removeprefix("transferflow-") in ROLES, f"{path}: `make image` builds no {found}"


def test_every_role_is_a_dockerfile_target_on_a_base_the_dockerfile_declares():
    assert set(ROLES) <= dockerfile_targets()
    dockerfile = (ROOT / "Dockerfile").read_text()
    for key, default in DOCKERFILE_BASES.items():
        assert f"ARG {key}={default}\n" in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {extra for role in ROLES.values() for extra in role.extras} <= set(extras)


def test_the_cpu_images_tensorflow_cpu_is_the_locked_tensorflow():
    packages = tomllib.loads((ROOT / "uv.lock").read_text())["package"]
    versions = {package["name"]: package["version"] for package in packages}
    assert versions["tensorflow-cpu"] == versions["tensorflow"]


def test_transferflow_serve_loads_without_the_packages_its_image_leaves_out():
    # What `transferflow serve` loads: the CLI, the server and app, and (when a version loads) the
    # model code and the monitoring features, here with the pruned packages made unimportable as in
    # the image (Keras imports scikit-learn and matplotlib only when they are there). The smoke test
    # (deployments/images/build-offline.sh) serves a model from the pruned image itself.
    blocked = sorted({*SERVE_PRUNED, "sklearn"} - {"scikit-learn"})
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r}));"
            "import transferflow.cli, transferflow.cli.serve, transferflow.serving.server, "
            "transferflow.serving.versions, transferflow.training.model, transferflow.monitoring.features")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert answer.returncode == 0, answer.stderr[-2000:]


def test_a_roles_requirements_keep_only_what_its_base_installs():
    text = ("numpy==2.1.0 \\\n    --hash=sha256:aa\n"
            "tensorflow-cpu==2.21.0 ; sys_platform == 'linux' and platform_machine == 'x86_64' \\\n"
            "    --hash=sha256:bb\n"
            "pywin32==308 ; sys_platform == 'win32' \\\n    --hash=sha256:cc\n"
            "exceptiongroup==1.2.2 ; python_full_version < '3.12' \\\n    --hash=sha256:dd\n")
    assert for_environment(text, "3.13") == ("numpy==2.1.0 \\\n    --hash=sha256:aa\n"
                                            "tensorflow-cpu==2.21.0 \\\n    --hash=sha256:bb\n")
    assert "exceptiongroup==1.2.2" in for_environment(text, "3.11")


def test_a_version_trained_on_tensorflow_cpu_records_its_tensorflow(monkeypatch):
    from importlib import metadata

    from transferflow.registry import versions

    def version_of(name):
        if name == "tensorflow":  # the CPU images have tensorflow-cpu instead
            raise metadata.PackageNotFoundError(name)
        return {"tensorflow-cpu": "2.21.0"}.get(name, "1.0")

    monkeypatch.setattr(versions.importlib_metadata, "version", version_of)
    assert versions.library_versions()["tensorflow"] == "2.21.0"
