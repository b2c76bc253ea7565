"""How busy the machine is around a benchmark run: the share of CPU time other processes use, measured.

The load average lags by minutes (a job stopped a minute ago still shows), so the benchmarks sample
``/proc/stat`` over a few seconds while they sleep; the load average is printed beside it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

QUIET = 0.05  # share of the CPUs used by other processes above which a run is marked as taken on a busy machine


def machine_state(seconds: float = 5.0) -> tuple[float, tuple[float, ...]]:
    """(:func:`cpu_busy` over ``seconds``, the load average): what :func:`load_line` reports."""
    return cpu_busy(seconds), os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3


def cpu_busy(seconds: float = 5.0) -> float:
    """Share of all CPUs' time spent busy (steal included) over ``seconds`` while this process sleeps.

    NaN where ``/proc/stat`` does not exist.
    """
    stat = Path("/proc/stat")
    if not stat.exists():
        return float("nan")

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle  # user .. steal; guest time is already inside user

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def load_line(before: tuple[float, tuple], after: tuple[float, tuple]) -> str:
    """How busy the machine was before and after the run, and whether that makes it a quiet run."""

    def one(state: tuple[float, tuple]) -> str:
        busy, load = state
        return f"{100 * busy:.1f} % of the CPUs busy (load average {' '.join(f'{v:.2f}' for v in load)})"

    worst = max(before[0], after[0])
    verdict = (
        f" — **the machine was busy** (others used more than {100 * QUIET:.0f} % of the CPUs): "
        "times are pessimistic and the ratios noisy."
        if worst > QUIET
        else " (a quiet run)."
    )
    return f"Load: {one(before)} before the run and {one(after)} after it{verdict}"
