"""The monitor's chart: each window's adjusted p-values over time (drift below the alpha line) and
its traffic, as PNG bytes (matplotlib on an Agg canvas, like transferflow.reporting.charts)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
from matplotlib.figure import Figure

from transferflow.reporting.charts import DPI, _png

TESTS = {"class_mix": "tab:blue", "confidence": "tab:orange", "features": "tab:green"}
P_FLOOR = 1e-4  # p-values below are drawn at the floor, so that one tiny value does not squash the rest


def drift_chart_png(reports: list, alpha: float) -> bytes:
    """reports: WindowReport-like objects, oldest first."""
    figure = Figure(figsize=(700 / DPI, 480 / DPI), dpi=DPI, layout="constrained")
    tests_axes, traffic_axes = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    times = [datetime.fromisoformat(report.closed_at) for report in reports]
    for name, colour in TESTS.items():
        values = [next((t.p_adjusted for t in report.verdict.tests if t.name == name), None)
                  for report in reports]
        points = [(when, max(value, P_FLOOR)) for when, value in zip(times, values, strict=True)
                  if value is not None]
        if points:
            tests_axes.plot(*zip(*points, strict=True), marker="o", color=colour, label=name)
    drifted = [(when, P_FLOOR) for when, report in zip(times, reports, strict=True) if report.drift]
    if drifted:
        tests_axes.scatter(*zip(*drifted, strict=True), marker="x", s=80, color="red", label="drift",
                           zorder=3)
    tests_axes.axhline(alpha, color="red", linestyle="--", linewidth=1, label=f"alpha {alpha:g}")
    tests_axes.set(yscale="log", ylim=(P_FLOOR / 2, 1.5), ylabel="adjusted p-value",
                   title="drift tests per window (Holm-adjusted; below the line: drift)")
    tests_axes.grid(alpha=0.3)
    tests_axes.legend(loc="lower left", fontsize="small", ncols=5)
    requests = np.array([report.requests for report in reports])
    traffic_axes.bar(times, requests, width=_bar_width(times), color="grey")
    traffic_axes.set(ylabel="requests", xlabel="window closed (UTC)")
    traffic_axes.grid(alpha=0.3)
    figure.autofmt_xdate()
    return _png(figure)


def _bar_width(times: list[datetime]) -> float:
    """Bars a bit narrower than the closest two windows are apart (in days, matplotlib's date unit)."""
    if len(times) < 2:
        return 0.01
    gaps = np.diff(sorted(t.timestamp() for t in times))
    smallest = gaps[gaps > 0].min() if (gaps > 0).any() else 3600.0
    return 0.8 * smallest / 86400
