"""What the commands print: aligned tables, table cells and JSON."""

from __future__ import annotations

import json
from typing import Any


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def version_cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def delta(a: Any, b: Any) -> str:
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return f"{b - a:+.4f}" if numeric else ""
