"""Peak resident memory of every process of one job, beside plain Pillow's for the same job.

Each process's peak is its ``VmHWM`` (``/proc/<pid>/status``), reset before the job by
writing ``5`` to ``/proc/<pid>/clear_refs`` (Linux resets the high-water mark to the current
RSS), so it is the peak during that job, whatever the process did before.  The roles: the
client (this process), Redis (the valkey-server process), the Celery worker's main process,
and every process of its prefork pool.  For Redis the server's own ``used_memory_peak``
(its allocator's count, not RSS) is given too; valkey 9.1 has no ``MEMORY RESET`` and
``CONFIG RESETSTAT`` leaves that peak alone (tried), so it is the job's own only where the
job raised it, which the bench arranges by running its memory jobs, smallest first, on a
cluster of their own.  Plain Pillow runs the same job in a fresh interpreter
(:mod:`benchlib.pillow_peak`), whose ``VmHWM`` is its peak.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from PIL import Image

from .pillow_peak import pixel_digest, status_kb

SCRIPTS = Path(__file__).resolve().parents[1]


def reset_peak(pid: int) -> bool:
    """Reset a process's ``VmHWM`` to its current RSS; ``False`` if that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_bytes(pid: int) -> int | None:
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else kb * 1024


def rss_bytes(pid: int) -> int | None:
    kb = status_kb(pid, "VmRSS")
    return None if kb is None else kb * 1024


@dataclass
class Peaks:
    """What one job's processes peaked at: per role, one entry per process."""

    processes: dict[str, list[dict[str, int | None]]] = field(default_factory=dict)
    redis_used_peak: int = 0  # INFO memory used_memory_peak after the job
    redis_used_peak_raised: bool = False  # whether the job raised it (else it is an earlier peak)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time.time(), pid, RSS)

    def window_peaks(self, start: float, end: float) -> dict[int, int]:
        """Per process, the largest RSS sampled between *start* and *end* (``time.time()``)."""
        out: dict[int, int] = {}
        for t, pid, rss in self.samples:
            if start <= t <= end:
                out[pid] = max(out.get(pid, 0), rss)
        return out

    def values(self) -> list[int]:
        return [int(p["peak"]) for procs in self.processes.values() for p in procs if p["peak"] is not None]

    @property
    def largest(self) -> int:
        return max(self.values(), default=0)

    @property
    def total(self) -> int:
        return sum(self.values())


class MemoryWatch:
    """Resets, then reads, the peak of every process of each role around one job."""

    def __init__(self, roles: dict[str, Callable[[], list[int]]], r: redis.Redis) -> None:
        self.roles = roles
        self.redis = r

    def _used_peak(self) -> int:
        return int(self.redis.info("memory")["used_memory_peak"])

    @contextmanager
    def job(self) -> Iterator[Peaks]:
        """Around one job: the :class:`Peaks` object is filled in when the block ends."""
        before = {role: pids() for role, pids in self.roles.items()}
        at_reset: dict[int, int | None] = {}
        for pids in before.values():
            for pid in pids:
                if not reset_peak(pid):
                    raise RuntimeError(f"cannot reset the peak of process {pid} (/proc/{pid}/clear_refs)")
                at_reset[pid] = rss_bytes(pid)
        used_before = self._used_peak()
        peaks = Peaks()
        stop = threading.Event()
        pids = [pid for role in before.values() for pid in role]
        sampler = threading.Thread(target=_sample, args=(pids, peaks.samples, stop), daemon=True)
        sampler.start()
        try:
            yield peaks
        finally:
            stop.set()
            sampler.join(5)
        for role, now in self.roles.items():
            every = list(dict.fromkeys([*before[role], *now()]))  # a process started meanwhile too
            peaks.processes[role] = [
                {"pid": pid, "peak": peak_bytes(pid), "rss_at_reset": at_reset.get(pid)} for pid in every
            ]
        peaks.redis_used_peak = self._used_peak()
        peaks.redis_used_peak_raised = peaks.redis_used_peak > used_before


#: Seconds between two RSS samples of the job's processes (the phases' peaks; VmHWM is exact).
SAMPLE_EVERY = 0.02


def _sample(pids: list[int], into: list[tuple[float, int, int]], stop: threading.Event) -> None:
    """Sample each process's RSS until *stop*: which phase of the job a peak fell in."""
    while not stop.is_set():
        now = time.time()
        for pid in pids:
            rss = rss_bytes(pid)
            if rss is not None:
                into.append((now, pid, rss))
        stop.wait(SAMPLE_EVERY)


def pillow_peak(spec: str, fmt: str, path: Path) -> dict[str, Any]:
    """Plain Pillow's whole job on *path* in a fresh interpreter: its peak, time and digests."""
    done = subprocess.run(
        [sys.executable, "-m", "benchlib.pillow_peak", "job", spec, fmt, str(path)],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Pillow job failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def make_image(width: int, height: int, seed: int, path: Path) -> None:
    """Write the big test PNG in a process of its own, unless it is there already (a cache)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "benchlib.pillow_peak", "make", str(width), str(height), str(seed), str(path)],
        cwd=SCRIPTS,
        check=True,
    )


def same_as(ours: bytes, pillow: dict[str, Any]) -> str:
    """tilechord's output against the digests of Pillow's: identical bytes, pixels, or DIFFERENT.

    A big output is opened with Pillow's bomb check lifted for the call (the bench trusts
    what its own job wrote), and restored after: the check is a module global.
    """
    if hashlib.sha256(ours).hexdigest() == pillow["bytes_sha256"]:
        return "identical bytes"
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            mine = pixel_digest(ours)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if mine == pillow["pixels"]:
        return "identical pixels"
    return f"DIFFERENT: tilechord {mine[:40]}..., Pillow {str(pillow['pixels'])[:40]}..."
