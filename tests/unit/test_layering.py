"""The layers: `transferflow/` is plain Python that imports no Prefect and nothing of the flows
or tasks; the Prefect layer installs under names that cannot collide in site-packages."""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "transferflow"
FORBIDDEN = ("prefect", "flows", "tasks", "transferflow_flows", "transferflow_tasks")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")))
def test_the_plain_package_imports_no_prefect_layer(module):
    bad = {name for name in imported_modules(ROOT / module) if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"{module} imports {sorted(bad)}: move that code to flows/ or tasks/"


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, f"add {sorted(folders - listed)} to [tool.setuptools] packages"
    assert config["package-dir"] == {"transferflow_flows": "flows", "transferflow_tasks": "tasks"}


@pytest.mark.parametrize("name", ["TRAIN_ENTRY_POINT", "PREFECT_START"])
def test_the_train_entry_points_resolve(name):
    from transferflow.cli import train

    module, _, attribute = getattr(train, name).partition(":")
    source = ROOT / config_dir(module) / f"{module.split('.')[-1]}.py"
    tree = ast.parse(source.read_text())
    assert attribute in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def config_dir(module: str) -> str:
    package = module.split(".")[0]
    return {"transferflow_flows": "flows", "transferflow_tasks": "tasks"}[package]


MAX_MODULE_LINES = 400  # past this a module is usually several concerns; split it by concern


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")))
def test_no_module_is_over_the_size_limit(module):
    lines = len((ROOT / module).read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by concern"


# Cross-cutting modules only: everything else lives in a package by concern. transferflow/__init__.py
# says why each of these stays on the top floor.
TOP_LEVEL = {"__init__.py", "errors.py", "storage.py", "localcache.py", "tflogs.py"}


def test_the_top_floor_holds_only_cross_cutting_modules():
    extra = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert not extra, f"move {sorted(extra)} into the package of its concern (or say in " \
                      "transferflow/__init__.py why it is cross-cutting, and add it to TOP_LEVEL)"
