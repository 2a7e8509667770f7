"""The measured cases: each runs tilechord and plain Pillow on the same work and gives rows."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import redis

from tilechord import Client

from .cpu import CpuByRole
from .measure import Pair, Row, compare, runs_detail, secs
from .pillow import PILLOW_EDITS, megapixels, pillow_job, same_output

#: The short latency case runs this many times ``--repeat``: one run takes milliseconds.
LATENCY_FACTOR = 5

Grid = str | tuple[int, int]


@dataclass(frozen=True)
class Setup:
    """What every case needs: the client, the cluster's Redis, and how often to run."""

    client: Client
    redis: redis.Redis
    runs: int
    warmup: int
    grid: Grid  # for the big-image cases


def _job_pair(setup: Setup, spec: str, data: bytes, grid: Grid, runs: int) -> tuple[str, Pair]:
    """The grid the job uses, and ``Client.process`` timed against the Pillow job."""
    client, edit = setup.client, PILLOW_EDITS[spec]
    used = client.plan(data, [spec], grid, "JPEG")[1]
    pair = compare(
        lambda: client.process(data, [spec], grid=grid, format="JPEG"),
        lambda: pillow_job(data, edit),
        runs,
        setup.warmup,
    )
    return str(used), pair


def speed_case(
    setup: Setup, label: str, spec: str, data: bytes, size: tuple[int, int], minimum: float | None
) -> Row:
    """A big image, one operation: tilechord seconds vs Pillow seconds."""
    used, pair = _job_pair(setup, spec, data, setup.grid, setup.runs)
    ratio = pair.pil / pair.tc
    return Row(
        case=f"{label}: {spec}, {megapixels(size)}, grid {used}",
        tilechord=secs(pair.tc),
        pillow=secs(pair.pil),
        value=f"{ratio:.2f}x",
        target="report" if minimum is None else f">= {minimum:.1f}x",
        passed=None if minimum is None else ratio >= minimum,
        tilechord_s=pair.tc,
        pillow_s=pair.pil,
        ratio=ratio,
        verified=same_output(pair.tilechord_out, pair.pillow_out),
        details={"grid": used, "input_bytes": len(data), **runs_detail(pair)},
    )


def latency_case(setup: Setup, data: bytes, size: tuple[int, int]) -> Row:
    """A small image (one tile, so one task): the milliseconds tilechord adds to Pillow's."""
    spec, runs = "sharpen", setup.runs * LATENCY_FACTOR
    used, pair = _job_pair(setup, spec, data, "auto", runs)
    extra_ms = (pair.tc - pair.pil) * 1000
    return Row(
        case=f"latency: {spec}, {size[0]}x{size[1]}, grid {used} (median of {runs})",
        tilechord=f"{pair.tc * 1000:.1f} ms",
        pillow=f"{pair.pil * 1000:.1f} ms",
        value=f"{extra_ms:+.1f} ms",
        target="<= +10 ms",
        passed=extra_ms <= 10.0,
        tilechord_s=pair.tc,
        pillow_s=pair.pil,
        ratio=pair.pil / pair.tc,
        verified=same_output(pair.tilechord_out, pair.pillow_out),
        details={"extra_ms": extra_ms, "grid": used, **runs_detail(pair)},
    )


def tilechord_batch(client: Client, sources: list[bytes], spec: str, inflight: int | None) -> list[bytes]:
    """tilechord.map over every source (small images travel several to a task); results in order."""
    results: list[bytes] = [b""] * len(sources)
    for outcome in client.map(sources, [spec], grid="auto", format="JPEG", jobs=inflight, timeout=120):
        results[outcome.index] = outcome.unwrap()
    return results


def throughput_case(
    setup: Setup, sources: list[bytes], size: tuple[int, int], inflight: int | None, cpu: CpuByRole
) -> list[Row]:
    """The throughput row, and a row that reads it against the CPU each side used."""
    spec = "sharpen"
    edit = PILLOW_EDITS[spec]
    pillow_cpu: list[float] = []

    def pillow_loop() -> list[bytes]:
        started = time.process_time()
        out = [pillow_job(data, edit) for data in sources]
        pillow_cpu.append(time.process_time() - started)
        return out

    ours = cpu.measure(lambda: tilechord_batch(setup.client, sources, spec, inflight))
    pair = compare(ours, pillow_loop, setup.runs, setup.warmup)
    count = len(sources)
    tc_rate, pil_rate = count / pair.tc, count / pair.pil
    ratio = tc_rate / pil_rate
    checks = {same_output(a, b) for a, b in zip(pair.tilechord_out, pair.pillow_out, strict=True)}
    verified = next((c for c in checks if c.startswith("DIFFERENT")), None) or ", ".join(sorted(checks))
    row = Row(
        case=f"throughput: {count} x {size[0]}x{size[1]} {spec}, tilechord.map, "
        + (f"{inflight} tasks in flight" if inflight else "its defaults"),
        tilechord=f"{secs(pair.tc)} ({tc_rate:.0f}/s)",
        pillow=f"{secs(pair.pil)} ({pil_rate:.0f}/s)",
        value=f"{ratio:.2f}x",
        target=">= 1.6x",
        passed=ratio >= 1.6,
        tilechord_s=pair.tc,
        pillow_s=pair.pil,
        ratio=ratio,
        verified=verified,
        details={"images": count, "tilechord_per_s": tc_rate, "pillow_per_s": pil_rate, **runs_detail(pair)},
    )
    bound = cpu_bound_row(cpu.mean(skip=setup.warmup), statistics.mean(pillow_cpu[setup.warmup :]), pair)
    return [row, bound]


def cpu_bound_row(used: dict[str, float], pillow_cpu: float, pair: Pair) -> Row:
    """The best ratio the CPU that a tilechord run used allows on this machine's cores.

    Every process of a run (the client, Redis, the worker's main process, its pool) shares
    the same cores here.  Even with no idle moment at all, a run cannot take less wall
    time than all their CPU time divided by the cores; Pillow's wall time over that is the
    ceiling for this run's ratio, whatever the scheduling.  On a cluster, where the client
    and Redis are elsewhere, only the pool's share would count.
    """
    cores = os.cpu_count() or 1
    total = sum(used.values())
    best = pair.pil / (total / cores) if total else float("nan")
    parts = " + ".join(f"{role} {seconds * 1000:.0f}" for role, seconds in used.items())
    return Row(
        case=f"throughput's bound: its CPU / {cores} cores ({parts} ms)",
        tilechord=f"{total * 1000:.0f} ms CPU",
        pillow=f"{pillow_cpu * 1000:.0f} ms CPU",
        value=f"<= {best:.2f}x",
        target="report",
        passed=None,
        ratio=best,
        details={"cpu_ms": {role: round(s * 1000, 1) for role, s in used.items()},
                 "pillow_cpu_ms": round(pillow_cpu * 1000, 1), "cores": cores},
    )  # fmt: skip


def _pillow_jobs(work: tuple[list[bytes], str]) -> float:
    """Run the Pillow job on each source (in a pool's process); the CPU seconds it took."""
    sources, spec = work
    started = time.process_time()
    for data in sources:
        pillow_job(data, PILLOW_EDITS[spec])
    return time.process_time() - started


def ceiling_case(label: str, spec: str, sources: list[bytes], processes: int, runs: int) -> Row:
    """What this machine gives any parallel Python: plain Pillow in *processes* processes.

    The same Pillow jobs, cut into one equal share per process of a ``multiprocessing``
    pool (started beforehand), against one process doing them all.  Two vCPUs that are
    hyperthreads of one core, or busy neighbours on the host, give less than 2x here; no
    scheduler on top can do better than this, so tilechord's ratios are read against it.
    The CPU columns show the same work costing more CPU when the processes run at once.
    """
    shares = [(sources[i::processes], spec) for i in range(processes)]
    parallel_cpu: list[float] = []
    alone_cpu: list[float] = []

    def parallel() -> None:
        parallel_cpu.append(sum(pool.map(_pillow_jobs, shares)))

    def alone() -> None:
        alone_cpu.append(_pillow_jobs((sources, spec)))

    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_pillow_jobs, [(share[:1], spec) for share, _ in shares])  # warm the processes
        pair = compare(parallel, alone, runs, warmup=0)
    ratio = pair.pil / pair.tc
    cpu_ms = statistics.mean(parallel_cpu) * 1000, statistics.mean(alone_cpu) * 1000
    return Row(
        case=f"ceiling ({label}): Pillow alone in {processes} processes",
        tilechord=f"{secs(pair.tc)} ({cpu_ms[0]:.0f} ms CPU)",
        pillow=f"{secs(pair.pil)} ({cpu_ms[1]:.0f} ms CPU)",
        value=f"{ratio:.2f}x",
        target="report",
        passed=None,
        tilechord_s=pair.tc,
        pillow_s=pair.pil,
        ratio=ratio,
        details={
            "processes": processes,
            "jobs": len(sources),
            "cpu_ms": cpu_ms[0],
            "pillow_cpu_ms": cpu_ms[1],
            **runs_detail(pair),
        },
    )


def net_bytes(r: redis.Redis) -> tuple[int, int]:
    stats: dict[str, Any] = r.info("stats")
    return int(stats["total_net_input_bytes"]), int(stats["total_net_output_bytes"])


def traffic_case(setup: Setup, spec: str, data: bytes, size: tuple[int, int]) -> Row:
    """Bytes written into (and read from) Redis during one whole job, by Redis's own count."""
    client, r = setup.client, setup.redis
    used = client.plan(data, [spec], setup.grid, "JPEG")[1]
    raw = size[0] * size[1] * 3  # RGB
    time.sleep(0.3)  # let the previous job's stragglers (result writes, events) settle
    in0, out0 = net_bytes(r)
    client.process(data, [spec], grid=setup.grid, format="JPEG")
    time.sleep(0.3)  # the merge stores its Celery result just after notifying us
    in1, out1 = net_bytes(r)
    written, read = in1 - in0, out1 - out0
    ratio = written / raw
    return Row(
        case=f"Redis bytes per job: {spec}, {megapixels(size)}, grid {used}",
        tilechord=f"in {written / 1e6:.1f} MB, out {read / 1e6:.1f} MB",
        pillow=f"(raw {raw / 1e6:.1f} MB)",
        value=f"{ratio:.2f}x raw (out {read / raw:.2f}x)",
        target="in <= 2.5x raw",
        passed=ratio <= 2.5,
        ratio=ratio,
        details={
            "raw_bytes": raw,
            "jpeg_bytes": len(data),
            "net_input_bytes": written,
            "net_output_bytes": read,
            "output_ratio": read / raw,
        },
    )
