"""The documentation: the generated reference covers every command, flag and config field; the
README stays short; every `make` target and `transferflow` command the docs show exists; the site
builds strictly."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from transferflow.cli import build_parser
from transferflow.config import RetrainConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_LINES = 250


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict:
    """{("models", "list"): parser, ...}, walked here independently of the generator."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= _leaf_parsers(child, path + (name,)) or {path + (name,): child}
    return found


def _sections(page: str) -> dict[str, str]:
    """The generated CLI page split by its `## `transferflow ...`` headings."""
    parts = re.split(r"^## `(transferflow[^`]*)`$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_cli_reference_has_every_command_and_every_flag():
    sections = _sections(_generator().render_cli())
    leaves = _leaf_parsers(build_parser())
    assert {"train", "serve", "monitor", "watch"} <= {path[0] for path in leaves}
    for path, parser in leaves.items():
        title = "transferflow " + " ".join(path)
        assert title in sections, f"{title} is missing from the CLI reference"
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or not action.option_strings \
                    or action.help == argparse.SUPPRESS:  # hidden flags, e.g. watch --polls for tests
                continue
            for option in action.option_strings:
                assert re.search(rf"^\| (`|<code>)[^|]*{re.escape(option)}\b", sections[title], re.M), \
                    f"{option} of {title} is missing from the CLI reference"


def test_the_cli_reference_shows_the_defaults_a_user_gets():
    sections = _sections(_generator().render_cli())
    head_epochs = RetrainConfig.model_fields["head_epochs"].default
    # train's flags default to SUPPRESS (unset stays unset): the field's default is what applies
    assert re.search(rf"^\| `--head-epochs N` \| `{head_epochs}` \|", sections["transferflow train"], re.M)
    assert re.search(r"^\| `--port PORT` \| `8501` \|", sections["transferflow serve"], re.M)
    # `models evaluate --dataset` is not RetrainConfig's dataset: it has no default
    assert re.search(r"^\| `--dataset URI` \|  \|", sections["transferflow models evaluate"], re.M)


def test_the_configuration_reference_has_every_field_with_its_flag_and_default():
    page = _generator().render_config()
    for name, field in RetrainConfig.model_fields.items():
        row = re.search(rf"^\| `{name}` \|(.*)$", page, re.M)
        assert row, f"RetrainConfig.{name} is missing from the configuration reference"
        assert f"`--{name.replace('_', '-')}`" in row[1]
        if field.description:
            assert field.description.split(":")[0][:30].replace("<", "&lt;") in row[1]
    assert re.search(r"^\| `image_size` \| .* \| `auto` \| ≥ 32, ≤ 1024 \|", page, re.M)


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def _shown_commands() -> list[tuple[str, str]]:
    """(file, command line) for every `make ...` and `transferflow ...` command in the README and
    the docs pages: every line of a ```bash block, and the `$ ` lines of transcripts."""
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for kind, block in re.findall(r"^```([a-z]*)\n(.*?)^```", path.read_text(), re.M | re.S):
            for line in block.splitlines():
                if kind != "bash" and not line.startswith("$ "):
                    continue  # output, not a command
                line = re.sub(r"^\$ |^\.venv/bin/|^([A-Z_]+=\S+ )+", "", line.strip()).split(" #")[0].strip()
                if line.startswith(("make ", "transferflow ")):
                    found.append((path.name, line))
    return found


def test_every_make_target_shown_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    shown = [(name, line) for name, line in _shown_commands() if line.startswith("make ")]
    assert len(shown) > 10
    for name, line in shown:
        target = line.split()[1]
        assert "=" in target or target in targets, f"{name}: `{line}` names no Makefile target"


def test_every_transferflow_command_and_flag_shown_exists():
    leaves = _leaf_parsers(build_parser())
    shown = [(name, line) for name, line in _shown_commands() if line.startswith("transferflow ")]
    assert len(shown) > 20
    for name, line in shown:
        words = shlex.split(line.replace("…", "").replace("\\", ""))[1:]
        words = [word for word in words if word != "--verbose"]
        path = next((p for p in sorted(leaves, key=len, reverse=True) if tuple(words[:len(p)]) == p), None)
        assert path, f"{name}: `{line}` is not a transferflow command"
        options = {option for action in leaves[path]._actions for option in action.option_strings}
        for word in words[len(path):]:
            flag = word.split("=")[0]
            assert not flag.startswith("--") or flag in options, f"{name}: `{line}`: {flag} does not exist"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="the docs extra is not installed")
def test_the_site_builds_strictly(tmp_path):
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env={"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true",
                                 "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "reference" / "configuration" / "index.html").exists()
    assert "head_epochs" in (tmp_path / "reference" / "configuration" / "index.html").read_text()
