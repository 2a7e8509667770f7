"""The memory cases: one real job each, its peaks per process and its timeline, beside Pillow.

Each case runs one job through the public client while :class:`benchlib.memory.MemoryWatch`
resets and reads every process's peak and :func:`benchlib.phases.traced_jobs` records the
Celery task events; then plain Pillow does the same job in a fresh interpreter.  From the
events come the serial head, parallel body and serial tail, and from them the speed-up
Amdahl's law allows on more workers (:mod:`benchlib.amdahl`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilechord import Client

from .amdahl import WORKER_COUNTS, amdahl_table
from .memory import SAMPLE_EVERY, MemoryWatch, Peaks, pillow_peak, same_as
from .phases import job_phases, median_of, traced_jobs

MB = 1_000_000


@dataclass(frozen=True)
class MemoryJob:
    """One job to measure: its name, operation, input file, output format, grid and image size."""

    label: str
    spec: str
    path: Path
    fmt: str
    grid: str | tuple[int, int]
    pixels: int
    timeout: float = 300.0


def memory_case(client: Client, watch: MemoryWatch, job: MemoryJob, workers: int) -> dict[str, Any]:
    """Run *job* once watched and traced, then Pillow's same job; everything as one JSON-able dict."""
    print(f"  memory: {job.label} ...", flush=True)
    used = client.plan(job.path.read_bytes(), [job.spec], job.grid, job.fmt)[1]
    with watch.job() as peaks:
        (traced,) = traced_jobs(client, job.path, job.spec, job.grid, 1, job.fmt, job.timeout)
    pillow = pillow_peak(job.spec, job.fmt, job.path)
    verified = same_as(traced.data, pillow)
    phases = job_phases(traced.events, workers)
    edits = len(phases["edit_runtimes_ms"]) if phases else 0
    w0 = max(1, min(workers, edits))
    out: dict[str, Any] = {
        "case": job.label,
        "spec": job.spec,
        "output_format": job.fmt,
        "grid": str(used),
        "input_bytes": job.path.stat().st_size,
        "raw_bytes": job.pixels * 3,  # the bench's images are RGB
        "tilechord_s": traced.events[-1]["done"] / 1000,
        "pillow_s": pillow["seconds"],
        **peaks_json(peaks),
        "pillow_peak_bytes": pillow["peak_bytes"],
        "pillow_start_bytes": pillow["start_bytes"],
        "largest_ratio": peaks.largest / pillow["peak_bytes"],
        "total_ratio": peaks.total / pillow["peak_bytes"],
        "verified": verified,
        "phases": median_of([phases]) if phases else None,
        "w0": w0,
        "amdahl": amdahl_table(phases, w0) if phases else None,
        "phase_peaks": phase_peaks(peaks, traced.t0, phases) if phases else None,
        "timeline": traced.events,
    }
    print(f"    {mb(peaks.largest)} largest, {mb(peaks.total)} all, Pillow {mb(pillow['peak_bytes'])}; "
          f"{verified}", flush=True)  # fmt: skip
    return out


def phase_peaks(peaks: Peaks, t0: float, phases: dict[str, Any]) -> dict[str, dict[str, list[int]]]:
    """Per phase (head, body, tail), per role, each process's largest sampled RSS in it."""
    head, body = phases["head_ms"] / 1000, phases["body_ms"] / 1000
    windows = {
        "head": (t0, t0 + head),
        "body": (t0 + head, t0 + head + body),
        "tail": (t0 + head + body, t0 + phases["end_to_end_ms"] / 1000),
    }
    out: dict[str, dict[str, list[int]]] = {}
    for name, (start, end) in windows.items():
        seen = peaks.window_peaks(start, end)
        out[name] = {
            role: [seen.get(int(p["pid"] or 0), 0) for p in procs] for role, procs in peaks.processes.items()
        }
    return out


def phase_line(case: dict[str, Any]) -> str:
    """Where in the job each process peaked: the largest RSS sampled in each phase."""
    parts = []
    for name, roles in (case.get("phase_peaks") or {}).items():
        text = ", ".join(f"{role} {' / '.join(mb(v) for v in values)}" for role, values in roles.items())
        parts.append(f"{name}: {text}")
    every = f"{SAMPLE_EVERY * 1000:.0f} ms"
    return f"    RSS sampled every {every}, largest per phase: " + "; ".join(parts) if parts else ""


def peaks_json(peaks: Peaks) -> dict[str, Any]:
    return {
        "processes": peaks.processes,
        "largest_bytes": peaks.largest,
        "total_bytes": peaks.total,
        "redis_used_memory_peak": peaks.redis_used_peak,
        "redis_used_memory_peak_raised": peaks.redis_used_peak_raised,
    }


def mb(value: float | None) -> str:
    return "?" if value is None else f"{value / MB:,.0f} MB"


def _role(case: dict[str, Any], role: str) -> str:
    values = [p["peak"] for p in case["processes"].get(role, [])]
    return " / ".join(mb(v) for v in values) if values else "-"


def _redis(case: dict[str, Any]) -> str:
    used = mb(case["redis_used_memory_peak"])
    used = used if case["redis_used_memory_peak_raised"] else f"<= {used}, not raised by this job"
    return f"{_role(case, 'Redis')} (used_memory_peak {used})"


def memory_table(cases: list[dict[str, Any]]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The head and cells of the memory table, one row per case."""
    head: tuple[str, ...] = (
        "job", "client", "Redis RSS (used_memory_peak)", "worker", "pool (each)", "largest", "all",
        "Pillow", "largest / Pillow", "all / Pillow", "raw image",
    )  # fmt: skip
    cells: list[tuple[str, ...]] = [
        (
            f"{c['case']}, grid {c['grid']}",
            _role(c, "client"),
            _redis(c),
            _role(c, "worker"),
            _role(c, "pool"),
            mb(c["largest_bytes"]),
            mb(c["total_bytes"]),
            mb(c["pillow_peak_bytes"]),
            f"{c['largest_ratio']:.2f}x",
            f"{c['total_ratio']:.2f}x",
            mb(c["raw_bytes"]),
        )
        for c in cases
    ]
    return head, cells


def baseline_line(case: dict[str, Any]) -> str:
    """Each process's RSS when its peak was reset, and Pillow's before its job: what is not the job."""
    procs = case["processes"]
    roles = "; ".join(f"{role} " + " / ".join(mb(p["rss_at_reset"]) for p in procs[role]) for role in procs)
    return f"  {case['case']}: {roles}; Pillow's process {mb(case['pillow_start_bytes'])}"


def amdahl_text(table: dict[str, float], w0: int) -> str:
    bounds = ", ".join(f"{n} workers {table[str(n)]:.2f}x" for n in WORKER_COUNTS)
    return (
        f"Amdahl, S(n) = T / (head + tail + body * {w0} / n) with the body run on {w0} workers: {bounds}; "
        f"no number of workers beats T / (head + tail) = {table['inf']:.2f}x"
    )


def timeline_lines(case: dict[str, Any]) -> list[str]:
    """The job's head, body and tail (ms) and the Amdahl bounds, as report lines."""
    phases = case["phases"]
    if phases is None:
        return [f"  {case['case']}: no phases (not split -> edits -> merge, or an event was missing)"]
    total = phases["end_to_end_ms"]
    edits = len(phases["edit_runtimes_ms"])
    return [
        f"  {case['case']}, grid {case['grid']}: end to end T {total:.0f} ms = serial head "
        f"{phases['head_ms']:.0f} (until the first edit starts) + parallel body {phases['body_ms']:.0f} "
        f"({edits} edits) + serial tail {phases['tail_ms']:.0f} (after the last edit ends); "
        f"Pillow alone {case['pillow_s'] * 1000:.0f} ms",
        f"    {amdahl_text(case['amdahl'], case['w0'])}",
        phase_line(case),
    ]
