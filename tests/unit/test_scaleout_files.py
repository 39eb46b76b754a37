"""engine ray without a cluster: the local path never imports Ray, the config fields and flags, the
checks before any work (Ray missing, RAY_ADDRESS silent), the KubeRay manifest, and the decode
job's driver side (pieces, results handed to the writer by position, a node without the files)."""

import ast
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transferflow.config import RetrainConfig
from transferflow.errors import ConfigError
from transferflow.pipeline.preflight import preflight

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "transferflow"
RAY_SIDE = {"transferflow/scaleout", "transferflow/devstack/raycluster.py"}
RAY_DEPLOYMENT = ROOT / "deployments" / "ray"


def module_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (imports inside functions run only when called)."""
    names, pending = set(), list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        pending += list(ast.iter_child_nodes(node))
    return names


LOCAL_MODULES = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
                       if not any(str(p.relative_to(ROOT)).startswith(side) for side in RAY_SIDE))


@pytest.mark.parametrize("module", LOCAL_MODULES)
def test_the_local_path_imports_neither_ray_nor_the_scaleout_package(module):
    bad = {name for name in module_level_imports(ROOT / module)
           if name.split(".")[0] == "ray" or name.startswith("transferflow.scaleout")}
    assert not bad, f"{module} imports {sorted(bad)} at import time: import it where engine ray is chosen"


def test_importing_and_checking_a_local_run_loads_no_ray():
    """The modules a local run imports before training, and the scaleout modules themselves (they
    import Ray only inside the functions that use it)."""
    code = ("import sys\n"
            "import transferflow.cli, transferflow.pipeline.phases, transferflow.pipeline.preflight\n"
            "import transferflow.training.features\n"
            "from transferflow.config import RetrainConfig\n"
            "assert 'ray' not in sys.modules, 'the local path imported ray'\n"
            "import importlib, pkgutil, transferflow.scaleout as scaleout\n"
            "for module in pkgutil.iter_modules(scaleout.__path__):\n"
            "    importlib.import_module(f'transferflow.scaleout.{module.name}')\n"
            "assert 'ray' not in sys.modules, 'importing transferflow.scaleout imported ray'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]


def test_engine_fields_default_to_a_local_run_and_are_flags():
    from transferflow.cli import build_parser

    config = RetrainConfig()
    assert (config.engine, config.num_workers, config.gpus_per_worker) == ("local", 2, 0.0)
    args = build_parser().parse_args(["train", "--engine", "ray", "--num-workers", "4", "--gpus-per-worker",
                                      "0.5"])
    assert (args.engine, args.num_workers, args.gpus_per_worker) == ("ray", 4, 0.5)
    for bad in ({"engine": "spark"}, {"num_workers": 0}, {"gpus_per_worker": -1}):
        with pytest.raises(ValueError):
            RetrainConfig(**bad)


def test_engine_ray_without_ray_installed_is_refused_naming_the_extra(monkeypatch, tmp_path):
    from transferflow.scaleout import cluster

    monkeypatch.setattr(cluster, "ray_installed", lambda: False)
    config = RetrainConfig(dataset=str(tmp_path), weights="none", engine="ray")
    with pytest.raises(ConfigError, match=r"--engine ray needs Ray.*pip install 'transferflow\[ray\]'"):
        preflight(config, as_flags=True)
    preflight(RetrainConfig(dataset=str(tmp_path), weights="none"), as_flags=True)  # local: no check


def test_a_ray_address_that_does_not_answer_is_refused_before_any_work(monkeypatch, tmp_path):
    pytest.importorskip("ray")
    config = RetrainConfig(dataset=str(tmp_path), weights="none", engine="ray")
    with socket.socket() as listener:  # a port that answers, then the same port closed
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        preflight(config)
    with pytest.raises(ConfigError, match=rf"engine ray: the Ray cluster at RAY_ADDRESS 127.0.0.1:{port} "
                                          r"does not answer.*make ray-up"):
        preflight(config)
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:port")
    with pytest.raises(ConfigError, match="RAY_ADDRESS 'ray://127.0.0.1:port' is not host:port"):
        preflight(config)


@pytest.fixture(scope="module")
def raycluster() -> dict:
    documents = list(yaml.safe_load_all((RAY_DEPLOYMENT / "raycluster.yaml").read_text()))
    return {document["kind"]: document for document in documents}


def pods(raycluster: dict) -> list[dict]:
    spec = raycluster["RayCluster"]["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [group["template"]["spec"]
                                                          for group in spec["workerGroupSpecs"]]


def test_the_kuberay_cluster_has_gpu_workers_and_runs_a_supported_ray(raycluster):
    import tomllib

    cluster = raycluster["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ray"]
    assert any(item.startswith("ray[data,train]>=2.") and "<3" in item for item in extra)
    assert cluster["spec"]["rayVersion"].split(".")[0] == "2"
    head = cluster["spec"]["headGroupSpec"]
    ports = {port["containerPort"] for port in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports >= {6379, 10001}  # the GCS, and Ray Client's port for RAY_ADDRESS=ray://...
    for group in cluster["spec"]["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert int(gpus) >= 1 and group["rayStartParams"]["num-gpus"] == gpus  # Ray sees what k8s gives
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    images = {container["image"] for pod in pods(raycluster) for container in pod["containers"]}
    assert len(images) == 1  # head and workers run the same transferflow and Ray


def test_every_ray_pod_takes_s3_from_the_example_secret_and_shares_the_cache(raycluster):
    secret = yaml.safe_load((RAY_DEPLOYMENT / "secret.example.yaml").read_text())
    for pod in pods(raycluster):
        [container] = pod["containers"]
        env = {item["name"]: item for item in container["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TRANSFERFLOW_BUCKET", "AWS_ENDPOINT_URL"):
            reference = env[name]["valueFrom"]["secretKeyRef"]
            assert reference["name"] == secret["metadata"]["name"]
            assert reference["key"] in secret["stringData"]
        assert not any("value" in env[name] for name in env if name.startswith("AWS_"))  # no keys inline
        mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
        assert env["TRANSFERFLOW_CACHE_DIR"]["value"] == mounts["cache"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        claim = volumes["cache"]["persistentVolumeClaim"]["claimName"]
        assert claim == raycluster["PersistentVolumeClaim"]["metadata"]["name"]
    assert raycluster["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def fake_split(count: int, size: int = 4, bad: tuple[int, ...] = ()):
    """A split whose image at position p is filled with p, and whose positions in `bad` fail."""
    import numpy as np

    from transferflow.data.decode import Decoded
    from transferflow.data.splits import Items

    def load(positions):
        good = [int(p) for p in positions if int(p) not in bad]
        images = np.stack([np.full((size, size, 3), p, np.uint8) for p in good]) if good else \
            np.zeros((0, size, size, 3), np.uint8)
        return Decoded(images, [i for i, p in enumerate(positions) if int(p) in bad])

    return Items(np.arange(count, dtype=np.int32) % 3, load, lambda i: f"img{i}")


def test_pieces_stay_within_the_writers_chunks_and_cover_every_position(monkeypatch):
    from transferflow.data import records
    from transferflow.scaleout.prepare import plan_pieces

    monkeypatch.setattr(records, "chunk_images", lambda size: 100)  # chunks of 100 positions
    pieces = plan_pieces({"train": fake_split(250), "val": fake_split(5)}, 4, num_workers=2)
    train = [(p.start, p.stop) for p in pieces if p.split == "train"]
    assert [p.split for p in pieces] == ["train"] * len(train) + ["val"]  # the order the writer asks
    assert train[0][0] == 0 and train[-1][1] == 250
    assert all(stop == after for (_, stop), (after, _) in zip(train, train[1:], strict=False))  # no gap
    assert all(start // 100 == (stop - 1) // 100 for start, stop in train)  # never across a chunk
    assert len(train) > 3  # cut finer than the chunks, so that every worker gets some


def test_results_are_handed_out_by_position_whatever_order_they_arrive_in():
    """The driver side of the decode job, fed a stream that is out of order and splits a piece
    over two batches: what the writer gets equals the local loader's answer, failures included."""
    import numpy as np

    from transferflow.scaleout.prepare import DecodeJob, DecodePieces, RayDecoder

    splits = {"train": fake_split(40, bad=(3, 21)), "val": fake_split(10, bad=(9,))}
    job = DecodeJob(RayDecoder(None, num_workers=2, roots=[], cwd="."), splits, 4)
    worker = DecodePieces({name: items.load for name, items in splits.items()}, 4, [], ".")
    rows = [worker({"split": np.array([p.split]), "start": np.array([p.start]), "stop": np.array([p.stop])})
            for p in job.pieces]
    halves = [{name: column[:5] for name, column in rows[0].items()},
              {name: column[5:] for name, column in rows[0].items()}]
    job.batches = iter([rows[-1], halves[1], *reversed(rows[1:-1]), halves[0]])
    for name, start, stop in (("train", 0, 16), ("train", 16, 40), ("val", 0, 10)):  # as the writer asks
        positions = np.arange(start, stop)
        expected, found = splits[name].load(positions), job.take(name, positions)
        assert found.bad == expected.bad
        assert found.images.tobytes() == expected.images.tobytes()


def test_a_node_that_cannot_see_the_files_is_refused_by_name(tmp_path):
    import numpy as np

    from transferflow.errors import DatasetError
    from transferflow.scaleout.prepare import DecodePieces

    worker = DecodePieces({"train": fake_split(4).load}, 4, [str(tmp_path / "cache")], str(tmp_path))
    with pytest.raises(DatasetError, match=r"does not see .*/cache: engine ray decodes images at the paths"):
        worker({"split": np.array(["train"]), "start": np.array([0]), "stop": np.array([4])})
