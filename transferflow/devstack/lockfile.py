"""The lock as installed: does this environment hold exactly what a role's requirements file pins?

    python -m transferflow.devstack.lockfile check requirements/run.txt   # after `make run`
    python -m transferflow.devstack.lockfile check requirements/dev.txt   # after `make venv`
    python -m transferflow.devstack.lockfile check --remove-strays requirements/dev.txt

The role files are exported from uv.lock by `make lock` and installed by the Makefile with
`uv pip install --require-hashes --no-deps` (uv at dev.txt's version, installed by pip). This is
`pip freeze` compared with them, both ways: every pinned distribution whose marker holds here is
installed at its version, and nothing else is installed but transferflow itself and the
installers.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name
from packaging.version import Version

# Installed beside the lock: the project (installed editable) and the installers (the venv's pip,
# and uv, which the run role's file does not pin).
OUTSIDE_THE_LOCK = frozenset({"transferflow", "pip", "uv"})


@dataclass(frozen=True)
class Pin:
    """One `name==version ; marker` entry of an exported requirements file."""

    name: str
    version: str
    marker: str = ""

    def applies(self) -> bool:
        """True when the marker holds for the running interpreter (pip installs it here)."""
        return not self.marker or Marker(self.marker).evaluate()


def read_pins(text: str) -> list[Pin]:
    """The pins of an exported requirements file (hash and comment lines skipped)."""
    pins = []
    for line in text.splitlines():
        if not line or line[0].isspace() or line.startswith(("#", "-")):
            continue
        requirement, _, marker = line.rstrip(" \\").partition(";")
        name, separator, version = requirement.strip().partition("==")
        if not separator:
            raise ValueError(f"{line!r} is not pinned with ==: re-export it with `make lock`")
        pins.append(Pin(canonicalize_name(name.split("[")[0]), version.strip(), marker.strip()))
    return pins


def installed() -> dict[str, str]:
    """Every distribution installed in this environment's site-packages, by canonical name: what
    `pip freeze` lists. Only there: a process that imported Ray also sees the copies Ray puts on
    sys.path (ray/thirdparty_files: psutil), which no installer put in the environment."""
    import sysconfig

    paths = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    return {canonicalize_name(found.metadata["Name"]): found.version
            for found in metadata.distributions(path=paths)}


def differences(pins: list[Pin], present: dict[str, str]) -> list[str]:
    """What keeps `present` from being exactly `pins` (the ones that apply here); empty when it is."""
    wanted = {pin.name: pin.version for pin in pins if pin.applies()}
    problems = [f"{name} is not installed (the lock pins {version})"
                for name, version in sorted(wanted.items()) if name not in present]
    problems += [f"{name} {present[name]} is installed, the lock pins {version}"
                 for name, version in sorted(wanted.items())
                 if name in present and Version(present[name]) != Version(version)]
    problems += [f"{name} {version} is installed but not in the lock"
                 for name, version in sorted(present.items())
                 if name not in wanted and name not in OUTSIDE_THE_LOCK]
    return problems


def strays(pins: list[Pin], present: dict[str, str]) -> list[str]:
    """Installed distributions that the role does not pin (left by an older install)."""
    wanted = {pin.name for pin in pins if pin.applies()} | OUTSIDE_THE_LOCK
    return sorted(name for name in present if name not in wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m transferflow.devstack.lockfile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare this environment with a role's requirements file")
    check.add_argument("requirements", type=Path)
    check.add_argument("--remove-strays", action="store_true",
                       help="first uninstall what the file does not pin (make venv: dev holds every role)")
    args = parser.parse_args(argv)
    pins = read_pins(args.requirements.read_text())
    extra = strays(pins, installed()) if args.remove_strays else []
    if extra:
        print(f"uninstalling what {args.requirements} does not pin: {', '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra], check=True)
    problems = differences(pins, installed())
    for problem in problems:
        print(problem)
    applied = sum(pin.applies() for pin in pins)
    if problems:
        print(f"{len(problems)} difference(s) from {args.requirements}: rm -rf .venv and make it again")
        return 1
    print(f"the environment matches {args.requirements}: {applied} pinned distributions at their versions, "
          f"nothing else but {', '.join(sorted(OUTSIDE_THE_LOCK))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
