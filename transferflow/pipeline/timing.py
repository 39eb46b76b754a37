"""Where a run's wall time goes: one clock per run, stage by stage, from the process's own start.

The retrain flow times each stage with a `StageClock`; the stages up to the export are saved in the
version's metadata (`timings`), all of them (registration and the report too) are shown in the run
report and printed at the end of `transferflow train`. Start-up is measured from the process's
start (Linux: /proc), split where `transferflow train` hands over to Prefect (`mark_handover`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

# The order stages are shown in; a stage a run did not have is left out.
STAGES = ("startup", "prefect_start", "checks", "dataset", "backbone", "features", "head", "fine_tune",
          "calibration", "evaluation", "promotion", "export", "registration", "report")
LABELS = {"startup": "start-up (Python, checks, TensorFlow)", "prefect_start": "Prefect start",
          "checks": "storage and input checks", "features": "features (backbone pass)",
          "head": "head training", "fine_tune": "fine-tuning", "promotion": "promotion gate"}

_handover: float | None = None  # time.time() when `transferflow train` called the flow
_clocks = 0  # clocks made in this process: start-up is counted by the first one only


def mark_handover() -> None:
    """Called by `transferflow train` as it starts the flow: the start-up before it is ours,
    what follows until the flow's first stage is Prefect's."""
    global _handover
    _handover = time.time()


def process_started() -> float | None:
    """This process's start as time.time(), from /proc (None where there is no /proc)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


class StageClock:
    """Seconds per stage of one run: `with clock("dataset"): ...`; start-up is counted at creation."""

    def __init__(self):
        global _clocks, _handover
        self.seconds: dict[str, float] = {}
        now, started = time.time(), process_started()
        if started is not None and _handover is not None and started <= _handover <= now:
            self.seconds.update(startup=_handover - started, prefect_start=now - _handover)
        elif started is not None and not _clocks:  # a worker's process for this one flow run
            self.seconds["prefect_start"] = max(0.0, now - started)
        _clocks, _handover = _clocks + 1, None  # a later flow in this process started long after it
        self.began = time.monotonic() - sum(self.seconds.values())

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.monotonic() - started

    def split(self, stage: str, part: str, seconds: float | None) -> None:
        """Count `seconds` of `stage` as `part` instead (the features inside the head phase)."""
        if seconds and stage in self.seconds:
            moved = min(seconds, self.seconds[stage])
            self.seconds[stage] -= moved
            self.seconds[part] = self.seconds.get(part, 0.0) + moved

    def stages(self) -> dict[str, float]:
        """Every stage so far, in STAGES order, and `total`: the process's whole time until now
        (so the stages' sum and the total differ by what ran between stages)."""
        ordered = {name: round(self.seconds[name], 2) for name in STAGES if name in self.seconds}
        ordered.update({name: round(value, 2) for name, value in self.seconds.items() if name not in ordered})
        return {**ordered, "total": round(time.monotonic() - self.began, 2)}


def table(timings: dict[str, float]) -> list[tuple[str, float, float]]:
    """(label, seconds, share of the total) per stage, for reports and the CLI."""
    total = timings.get("total") or sum(v for k, v in timings.items() if k != "total") or 1.0
    return [(LABELS.get(name, name), seconds, seconds / total)
            for name, seconds in timings.items() if name != "total"]
