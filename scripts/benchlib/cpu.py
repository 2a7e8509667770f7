"""CPU accounting from ``/proc``: per role of a run, and the rest of the machine."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def proc_ticks(pid: int, reaped: bool = False) -> int:
    """CPU clock ticks a process has used (utime + stime; *reaped*: and its waited-for children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rfind(")") + 2 :].split()
    return sum(int(v) for v in fields[11 : 15 if reaped else 13])


def proc_cpu_s(pid: int) -> float:
    """CPU seconds a process has used: nanoseconds from ``schedstat``, else clock ticks."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return proc_ticks(pid) / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


class CpuByRole:
    """CPU seconds used by each role (client, Redis, the worker's main process, its pool).

    Sampled from ``/proc`` around each run of a case, so that a ratio can be read against
    what the two cores actually had to do: every process of a tilechord run shares them.
    """

    def __init__(self, roles: dict[str, Callable[[], list[int]]]) -> None:
        self.roles = roles
        self.runs: list[dict[str, float]] = []

    def _sample(self) -> dict[str, float]:
        return {role: sum(proc_cpu_s(pid) for pid in pids()) for role, pids in self.roles.items()}

    def measure(self, fn: Callable[[], T]) -> Callable[[], T]:
        """*fn*, recording the CPU each role used while it ran."""

        def run() -> T:
            before = self._sample()
            out = fn()
            after = self._sample()
            self.runs.append({role: after[role] - before[role] for role in self.roles})
            return out

        return run

    def mean(self, skip: int) -> dict[str, float]:
        """Per role, the mean CPU seconds of the runs after the first *skip* (warm-ups).

        A mean, not a median: where ``/proc`` counts only in clock ticks (10 ms), averaging
        is what evens that out over runs of a few hundred milliseconds.
        """
        runs = self.runs[skip:] or self.runs
        return {role: statistics.mean(run[role] for run in runs) for role in self.roles}


class CpuMeter:
    """CPU time used on the machine by processes other than ours, from ``/proc``.

    Another workload on the machine slows both sides unevenly (tilechord needs both cores,
    the Pillow baseline one), so the report says how much there was.
    """

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self.tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._start = self._sample()
        self._wall = time.perf_counter()

    @staticmethod
    def _busy() -> int:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return 0
        # user nice system idle iowait irq softirq [steal guest guest_nice]: guest time is
        # already in user, steal is the hypervisor's, idle and iowait are not busy.
        values = [int(v) for v in fields[:7]] + [0] * (7 - len(fields[:7]))
        return sum(values) - values[3] - values[4]

    def _ours(self) -> int:
        return sum(proc_ticks(pid, reaped=True) for pid in self._pids())

    def _sample(self) -> tuple[int, int]:
        return self._busy(), self._ours()

    def report(self) -> dict[str, float]:
        busy, ours = self._sample()
        wall = time.perf_counter() - self._wall
        other = max(0, (busy - self._start[0]) - (ours - self._start[1])) / self.tick
        return {"wall_s": wall, "ours_cpu_s": (ours - self._start[1]) / self.tick, "other_cpu_s": other}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
