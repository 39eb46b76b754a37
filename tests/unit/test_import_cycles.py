"""No import circles in transferflow/: the modules form a graph without cycles, so each floor can be
read, tested and moved without the one above it.

The graph is built from the source with `ast`, not by importing:
- every import statement counts, also those inside functions (a lazy import is still a dependency:
  it only moves the failure, or the circle, to the first call);
- `from package import name` is an edge to the submodule `package.name` when there is one, else to
  `package` itself (its face, `__init__.py`, or the module that defines the name);
- a face counts as a module: its imports of its own submodules are edges, and so are the names in
  a lazy face's `_LAZY` table (resolved on first use, PEP 562);
- importing `package.sub` also runs `package/__init__.py`, but that implicit edge is not counted:
  every face that re-exports its submodules would otherwise be a circle. What is counted is real:
  a submodule that imports through its own package's face closes a circle face -> sub -> face,
  so inside a package, siblings import each other from their modules.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module and face under root/transferflow."""
    names = {}
    for path in (root / "transferflow").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _known(name: str, modules) -> str | None:
    """The longest prefix of a dotted name that is a module of ours (None for third-party names)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _lazy_targets(tree: ast.Module, package: str) -> set[str]:
    """The submodules a lazy face's `_LAZY = {name: submodule}` table points at."""
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)):
            return {f"{package}.{value.value}" for value in node.value.values}
    return set()


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, anywhere in its body."""
    modules = module_names(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        face = path.name == "__init__.py"
        edges = _lazy_targets(tree, name) if face else set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges.update(_known(alias.name, modules) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this module is in
                    package = name.split(".") if face else name.split(".")[:-1]
                    package = package[:len(package) - node.level + 1]
                    base = ".".join(package + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges.add(full if full in modules else _known(base, modules))
        graph[name] = edges - {None, name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, to name in the failure."""
    start, members = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in sorted(graph[path[-1]] & members):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                paths.append(path + [target])
    return component


def test_transferflow_has_no_import_circle():
    graph = import_graph()
    found = [" -> ".join(one_cycle(graph, component)) for component in circles(graph)]
    assert not found, ("import circles in transferflow/ (move the shared code to a module both can "
                       "import, or the choice one floor up):\n" + "\n".join(found))


def test_the_finder_sees_lazy_imports_and_names_the_circle(tmp_path):
    """A circle closed only by an import inside a function, and one through a lazy face, are found."""
    package = tmp_path / "transferflow"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from transferflow import high\n")
    (package / "high.py").write_text("from transferflow.low import f\n")
    (package / "inner" / "__init__.py").write_text('_LAZY = {"thing": "part"}\n')
    (package / "inner" / "part.py").write_text("from transferflow.inner import other\n")
    (package / "inner" / "other.py").write_text("def g():\n    from transferflow.inner import thing\n")
    graph = import_graph(tmp_path)
    assert circles(graph) == [["transferflow.high", "transferflow.low"],
                              ["transferflow.inner", "transferflow.inner.other", "transferflow.inner.part"]]
    assert one_cycle(graph, ["transferflow.high", "transferflow.low"]) == [
        "transferflow.high", "transferflow.low", "transferflow.high"]


def test_every_lazy_name_is_defined_where_its_face_says():
    """A lazy face's table names, for each public name, the submodule that defines it (checked from
    the source: no TensorFlow is loaded), and no name hides a submodule of the same name."""
    modules = module_names(ROOT)
    for face, path in modules.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        table = next((node.value for node in tree.body if isinstance(node, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)), None)
        for key, value in zip(table.keys, table.values, strict=True) if table else ():
            assert f"{face}.{key.value}" not in modules, f"{face}: {key.value} hides the submodule"
            source = ast.parse(modules[f"{face}.{value.value}"].read_text())
            defined = {node.name for node in source.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
            defined |= {t.id for node in source.body if isinstance(node, ast.Assign | ast.AnnAssign)
                        for t in getattr(node, "targets", [getattr(node, "target", None)])
                        if isinstance(t, ast.Name)}
            assert key.value in defined, f"{face}: {key.value} is not defined in {value.value}"
