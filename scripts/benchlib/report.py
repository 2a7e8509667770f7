"""What the bench prints besides the table: the machine, the phase breakdown, the timelines."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
from PIL import Image

from tilechord.imaging import Grid, tiles

from .memcases import amdahl_text


def machine(r: redis.Redis) -> dict[str, Any]:
    """The machine and the versions in play, for the header and the JSON."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server: dict[str, Any] = r.info("server")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pillow": version("pillow"),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "redis_py": version("redis"),
        "server": f"valkey {server.get('valkey_version', server.get('redis_version', '?'))}",
        "tilechord": version("tilechord"),
    }


def print_machine(info: dict[str, Any], workers: int) -> None:
    print(
        f"\nMachine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}; "
        f"{info['platform']}\nPython {info['python']}, Pillow {info['pillow']}, Celery {info['celery']}, "
        f"kombu {info['kombu']}, redis-py {info['redis_py']}, {info['server']}, "
        f"tilechord {info['tilechord']}; {workers} workers"
    )


def tile_raw_mb(size: tuple[int, int], grid: Grid, halo: int, mode: str) -> list[float]:
    """Each tile's raw size with its halo, in MB: what one tile's task holds in memory."""
    bands = Image.getmodebands(mode)
    return [
        round((t.cut[2] - t.cut[0]) * (t.cut[3] - t.cut[1]) * bands / 1e6, 1)
        for t in tiles(size[0], size[1], grid, halo)
    ]


def print_timeline(title: str, events: list[dict[str, Any]]) -> None:
    print(f"\n  {title} (Celery task events, ms after submit):")
    for e in events:
        parts = [
            f"{k} {e[k]:.1f}"
            for k in ("sent", "received", "started", "chord out", "succeeded", "failed", "done")
            if k in e
        ]
        if "runtime_ms" in e:
            parts.append(f"runtime {e['runtime_ms']:.1f}")
        print(f"    {e['task']:<24} " + ", ".join(parts))


def _parts(values: dict[str, float]) -> str:
    return "; ".join(f"{name} {ms:.1f}" for name, ms in values.items())


def print_breakdown(profile: dict[str, Any], measured_s: float) -> None:
    """The phases of the traced jobs (their medians) under the job's own report of its layout."""
    split = profile["split_report"]
    halo = split.get("halo", "?")
    print(
        f"\nWhere the time goes: {profile['case']}, grid {profile['grid']}, halo {halo} px, "
        f"tiles of {' + '.join(f'{mb} MB' for mb in profile['tile_raw_mb'])} raw, "
        f"source decoded {split.get('decode', '?')} (as the split reported)"
    )
    print_timeline("Worker timeline of one job", profile["timeline"])
    phases = profile["median"]
    if phases is None:
        print("\n  No phases: the traced jobs were not split -> edits -> merge, or an event was missing.")
    else:
        print_phases(phases, len(profile["per_job"]), measured_s)
        if profile.get("amdahl"):
            print(f"  {amdahl_text(profile['amdahl'], profile['w0'])}")
    print(f"  Traced jobs' results vs Pillow: {profile['same_as_pillow']}")


def print_phases(phases: dict[str, Any], jobs: int, measured_s: float) -> None:
    runtimes = phases["edit_runtimes_ms"]
    total = phases["end_to_end_ms"]
    serial = (phases["head_ms"] + phases["tail_ms"]) / total if total else 0.0
    print(
        f"\n  Phases, median of {jobs} traced job(s) (ms; from the task events, they add up to end to end):"
    )
    print(f"    serial head    {phases['head_ms']:8.1f}  {_parts(phases['head'])}")
    print(
        f"    parallel body  {phases['body_ms']:8.1f}  {len(runtimes)} edits, runtimes "
        f"{', '.join(f'{v:.1f}' for v in runtimes)}; the workers busy {phases['edits_busy_pct']:.0f}% of it"
    )
    print(
        f"    serial tail    {phases['tail_ms']:8.1f}  {_parts(phases['tail'])} "
        f"(the merge's runtime, its Celery result stored too: {phases['runtimes_ms']['merge']:.1f})"
    )
    print(
        f"    end to end     {total:8.1f}  serial {serial:.0%}; the cheap case above measured "
        f"{measured_s * 1000:.1f} (median)"
    )
    print(
        f"  Of the {total:.1f} ms: the client before the split {phases['client_ms']:.1f}, hand-overs "
        f"between tasks (queued, received, passed to a pool process) {phases['handovers_ms']:.1f}, "
        f"the tasks at work and the client reading the result {phases['rest_ms']:.1f}"
    )
