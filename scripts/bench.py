#!/usr/bin/env python
"""Benchmark tilechord against plain single-process Pillow doing the same whole job.

Starts its own Redis and worker pool (a :class:`tilechord.local.LocalCluster` with two
workers), builds deterministic photo-like test images, and measures, for each case, the
median of several runs after a warm-up:

* tilechord: ``Client.process(jpeg_bytes, [op], grid=..., format="JPEG")``, i.e. submit,
  split, edit tiles on the workers, merge, encode, and fetch the result;
* Pillow: decode the same JPEG bytes, apply the same Pillow call the operation makes,
  and encode a JPEG with the options tilechord uses for a JPEG input (the input's
  quantization tables and subsampling).

The two are run alternately (tilechord, Pillow, tilechord, ...) so that drift hurts both
alike, and each case checks once that both produce the same JPEG bytes (or at least the
same pixels).  Redis traffic is read from the server's own ``INFO stats`` counters.
Finally a phase breakdown of the 24 MP gaussian job shows where tilechord's time goes:
real jobs are run while the Celery task events are recorded, and their serial head,
parallel body and serial tail are read from those events and from the tasks' results.
The throughput case also reads, from ``/proc``, the CPU that the client, Redis, the
worker's main process and its pool used per run: all of it over the cores is the least
wall time any schedule could give that run, hence a bound on its ratio.

Last, on a fresh cluster of its own, the memory section runs the 24 MP gaussian job and a
big one (``--big``, a 100 MP PNG edited into a TIFF by default; left out by ``--quick``)
once each: every process's peak resident memory during the job (client, Redis, the
worker's main process, each pool process; ``VmHWM`` reset just before the job) beside
plain Pillow's peak doing the same job in a fresh interpreter, the job's serial head,
parallel body and serial tail from its task events, and the speed-up Amdahl's law allows
on 4, 8 and 16 workers.

Run from the project root with the project's virtualenv::

    python scripts/bench.py --quick          # smoke test, well under a minute
    python scripts/bench.py --json out.json  # the full run, under 10 minutes on 2 cores

The pieces live in ``scripts/benchlib/``; this file is the command line and the order
of the cases.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from benchlib.amdahl import amdahl_table
from benchlib.cases import (
    LATENCY_FACTOR,
    Setup,
    ceiling_case,
    latency_case,
    speed_case,
    throughput_case,
    traffic_case,
)
from benchlib.cpu import CpuByRole, CpuMeter, loadavg
from benchlib.measure import Row, grid_text, table
from benchlib.memcases import MemoryJob, baseline_line, memory_case, memory_table, timeline_lines
from benchlib.memory import MemoryWatch, make_image
from benchlib.messages import MessageSizes
from benchlib.phases import Traced, breakdown, traced_jobs
from benchlib.pillow import PILLOW_EDITS, jpeg, megapixels, photo, pillow_job
from benchlib.report import machine, print_breakdown, print_machine, print_timeline, tile_raw_mb
from tilechord import Client, Settings
from tilechord.local import LocalCluster

#: The case whose job the phase breakdown traces: a cheap filter, where overheads show.
TRACED_SPEC = "gaussian_blur:radius=8"
#: The memory section's big case: a PNG of --big (default 100 MP) edited into a TIFF.
BIG_SPEC = "gaussian_blur:radius=8"
BIG_DEFAULT = (10000, 10000)
BIG_SEED = 100
#: Where the big PNG is kept between runs (building it takes longer than the job).
BIG_CACHE = Path(tempfile.gettempdir()) / "tilechord-bench"


@dataclass(frozen=True)
class Sizes:
    """Image sizes and counts of one run mode (full or ``--quick``)."""

    large: tuple[int, int]  # "24 MP"
    medium: tuple[int, int]  # "12 MP"
    small: tuple[int, int]  # latency case
    batch_image: tuple[int, int]
    batch_count: int
    memory_big: bool = True  # the memory section's big case (--big); --quick has only the large one


FULL = Sizes(
    large=(6000, 4000), medium=(4240, 2832), small=(512, 512), batch_image=(256, 256), batch_count=200
)
QUICK = Sizes(
    large=(1500, 1000), medium=(1060, 708), small=(512, 512), batch_image=(256, 256), batch_count=40,
    memory_big=False,
)  # fmt: skip


@dataclass(frozen=True)
class Images:
    """The JPEG inputs of every case, built once."""

    large: bytes
    medium: bytes
    small: bytes
    batch: list[bytes]


@dataclass
class Results:
    """Everything measured inside the cluster, for the report and the JSON."""

    info: dict[str, Any]
    rows: list[Row]
    profile: dict[str, Any]
    small_events: list[dict[str, Any]]
    load: dict[str, float]
    memory: list[dict[str, Any]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=(
            "Benchmark tilechord (a local Redis plus a Celery worker pool, started here) against plain "
            "single-process Pillow doing the same whole job: decode a JPEG, apply the same Pillow call, "
            "encode a JPEG with the same options. Cases: median:size=5 on 12 MP (target >= 1.8x), "
            "gaussian_blur:radius=8 on 24 MP (>= 1.0x), invert on 24 MP (report), latency of a 512x512 "
            "sharpen (<= +10 ms), throughput of a batch of 200 256x256 sharpen jobs (>= 1.6x) with the "
            "CPU each process used for it, bytes written into Redis per job (<= 2.5x the raw image) and "
            "the largest task message (< 8 KB). Each case: warm-up 1, then the median of --repeat runs, "
            "tilechord and Pillow alternating. Ratio = Pillow time / tilechord time (> 1: tilechord "
            "faster). Then a phase breakdown of the 24 MP gaussian job, from the Celery task "
            "events of --repeat real jobs, and, on a fresh cluster, the peak memory of every process "
            "of one 24 MP job and one --big job beside plain Pillow's, with each job's head, body, "
            "tail and the speed-up Amdahl's law allows on 4, 8 and 16 workers."
        ),
        epilog="The full run takes about 4-5 minutes on 2 cores (the first builds the big PNG too, "
        "kept in the temporary directory); --quick about 20 seconds.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1.5 MP / 0.75 MP images instead of 24 / 12 MP, a batch of 40, "
                             "--repeat 1 unless given")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help=f"measured runs per case after the warm-up (default 3, 1 with --quick); "
                             f"the short latency case runs {LATENCY_FACTOR}xN times")  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=1, metavar="N", help="warm-up runs per case (default 1)"
    )
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="worker processes in the local pool (default 2)")  # fmt: skip
    parser.add_argument("--grid", type=grid_arg, default="auto", metavar="CxR|auto",
                        help="grid for the big-image cases (default auto: about one tile per worker); "
                             "the small-image cases use auto, which is 1x1 for them")  # fmt: skip
    parser.add_argument("--inflight", type=int, default=None, metavar="N",
                        help="tasks in flight, throughput case (map's jobs=; default map's own, "
                             "twice the workers)")  # fmt: skip
    parser.add_argument("--big", type=big_arg, default=BIG_DEFAULT, metavar="WxH|none",
                        help="the memory section's big case: a WxH PNG edited into a TIFF (default "
                             f"{BIG_DEFAULT[0]}x{BIG_DEFAULT[1]}; none leaves it out, as --quick "
                             "does)")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    args = parser.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    for name in ("repeat", "workers", "inflight"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def grid_arg(text: str) -> str | tuple[int, int]:
    """``auto`` or ``CxR`` (for argparse)."""
    if text.strip().lower() == "auto":
        return "auto"
    cols, sep, rows = text.strip().lower().partition("x")
    if not (sep and cols.isdigit() and rows.isdigit() and int(cols) > 0 and int(rows) > 0):
        raise argparse.ArgumentTypeError(f"a grid is auto or COLSxROWS like 2x1, not {text!r}")
    return (int(cols), int(rows))


def big_arg(text: str) -> tuple[int, int] | None:
    """``none`` or ``WxH`` (for argparse)."""
    if text.strip().lower() == "none":
        return None
    width, sep, height = text.strip().lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"the big case is WxH like 10000x10000 or none, not {text!r}")
    return (int(width), int(height))


def build_images(sizes: Sizes) -> Images:
    print("Building test images ...", flush=True)
    large_image = photo(*sizes.large, seed=24)
    large = jpeg(large_image)
    del large_image
    return Images(
        large=large,
        medium=jpeg(photo(*sizes.medium, seed=12)),
        small=jpeg(photo(*sizes.small, seed=5)),
        batch=[jpeg(photo(*sizes.batch_image, seed=1000 + i)) for i in range(sizes.batch_count)],
    )


CasePlan = list[tuple[str, Callable[[], Row | list[Row]]]]


def case_plan(setup: Setup, args: argparse.Namespace, sizes: Sizes, im: Images, cpu: CpuByRole) -> CasePlan:
    """Every case in the order it runs, each a name and the call that measures it."""
    big = "24 MP" if not args.quick else "quick"
    mid = "12 MP" if not args.quick else "quick"
    workers, runs = args.workers, setup.runs
    return [
        ("heavy filter", lambda: speed_case(
            setup, f"heavy ({mid})", "median:size=5", im.medium, sizes.medium, 1.8)),
        ("ceiling", lambda: ceiling_case(  # one run: each takes as long as the heavy case
            f"heavy, {mid} each", "median:size=5", [im.medium] * workers, workers, 1)),
        ("cheap filter", lambda: speed_case(
            setup, f"cheap ({big})", TRACED_SPEC, im.large, sizes.large, 1.0)),
        ("pixel op", lambda: speed_case(setup, f"pixel ({big})", "invert", im.large, sizes.large, None)),
        ("latency", lambda: latency_case(setup, im.small, sizes.small)),
        ("throughput", lambda: throughput_case(setup, im.batch, sizes.batch_image, args.inflight, cpu)),
        ("ceiling", lambda: ceiling_case(
            f"throughput, {len(im.batch)} images", "sharpen", im.batch, workers, runs)),
        ("traffic", lambda: traffic_case(setup, TRACED_SPEC, im.large, sizes.large)),
        ("traffic", lambda: traffic_case(setup, "median:size=5", im.medium, sizes.medium)),
    ]  # fmt: skip


def run_cases(plan: CasePlan) -> list[Row]:
    """Run each case, printing one progress line per case as it ends."""
    rows: list[Row] = []
    for name, run in plan:
        started = time.perf_counter()
        out = run()
        case_rows = out if isinstance(out, list) else [out]
        rows += case_rows
        row = case_rows[0]
        print(f"  {name:<13} {time.perf_counter() - started:6.1f} s  {row.case}: {row.value} "
              f"[{row.verdict}]", flush=True)  # fmt: skip
    return rows


def where_time_goes(setup: Setup, sizes: Sizes, im: Images, workers: int) -> tuple[dict[str, Any], Traced]:
    """Trace real jobs of the cheap-filter case (``--repeat`` of them) and one latency job."""
    client = setup.client
    grid = client.plan(im.large, [TRACED_SPEC], setup.grid, "JPEG")[1]
    expected = pillow_job(im.large, PILLOW_EDITS[TRACED_SPEC])
    profile = breakdown(traced_jobs(client, im.large, TRACED_SPEC, setup.grid, setup.runs), workers, expected)
    halo = int(profile["split_report"].get("halo", 0))
    mode = str(profile["merge_report"].get("mode", "RGB"))
    profile["case"] = f"{TRACED_SPEC} on {megapixels(sizes.large)}"
    profile["grid"] = str(grid)
    profile["tile_raw_mb"] = tile_raw_mb(sizes.large, grid, halo, mode)
    if profile["median"] is not None:
        profile["w0"] = max(1, min(workers, len(profile["median"]["edit_runtimes_ms"])))
        profile["amdahl"] = amdahl_table(profile["median"], profile["w0"])
    (small,) = traced_jobs(client, im.small, "sharpen", "auto", 1)
    return profile, small


def measure(args: argparse.Namespace, sizes: Sizes, im: Images) -> Results:
    """Start the local cluster, run every case and the breakdown in it, and stop it."""
    settings = Settings(workers=args.workers, job_timeout=300)
    messages = MessageSizes()
    print(
        f"Starting a local cluster (valkey-server + celery worker, {args.workers} processes) ...", flush=True
    )
    with LocalCluster(settings, workers=args.workers) as cluster:
        client = Client(cluster.settings)
        r = redis.Redis.from_url(cluster.url)
        info = machine(r)
        print_machine(info, args.workers)
        mode = "quick" if args.quick else "full"
        print(
            f"Mode {mode}: median of {args.repeat} run(s) after {args.warmup} warm-up(s) per case", flush=True
        )
        print(f"Load average at start: {loadavg()}\n", flush=True)
        assert cluster.pool is not None and cluster.redis is not None
        pool, server = cluster.pool, cluster.redis
        roles = CpuByRole({
            "client": lambda: [os.getpid()],
            "Redis": lambda: [server.pid] if server.pid else [],
            "worker": lambda: [pool.pid] if pool.pid else [],
            "pool": pool.child_pids,
        })  # fmt: skip
        meter = CpuMeter(lambda: [os.getpid(), *(p for p in (pool.pid, server.pid) if p), *pool.child_pids()])
        setup = Setup(client, r, args.repeat, args.warmup, args.grid)
        rows = run_cases(case_plan(setup, args, sizes, im, roles)) + messages.rows()
        profile, small = where_time_goes(setup, sizes, im, args.workers)
        load = meter.report()
        client.close()
        r.close()
    return Results(info, rows, profile, small.events, load, measure_memory(args, sizes, im))


def memory_jobs(args: argparse.Namespace, sizes: Sizes, im: Images, work: Path) -> list[MemoryJob]:
    """The memory section's jobs, smallest first: the large (24 MP) case, then the big one."""
    large = work / "large.jpg"
    large.write_bytes(im.large)
    name = "cheap (24 MP)" if not args.quick else "cheap (quick)"
    pixels = sizes.large[0] * sizes.large[1]
    jobs = [MemoryJob(f"{name}: {TRACED_SPEC}, {megapixels(sizes.large)} JPEG -> JPEG", TRACED_SPEC, large,
                      "JPEG", args.grid, pixels)]  # fmt: skip
    if sizes.memory_big and args.big is not None:
        width, height = args.big
        path = BIG_CACHE / f"photo-{width}x{height}-seed{BIG_SEED}.png"
        print(f"Building the big input, a {width}x{height} PNG (kept in {path}) ...", flush=True)
        make_image(width, height, BIG_SEED, path)
        label = f"big: {BIG_SPEC}, {megapixels(args.big)} PNG -> TIFF"
        jobs.append(MemoryJob(label, BIG_SPEC, path, "TIFF", args.grid, width * height, timeout=900))
    return jobs


def warm_up(client: Client, workers: int) -> None:
    """A small job of each kind first, a tile per worker like the measured ones, so that the
    measured jobs are not any process's first (imports, connections); small, so that each
    measured job still raises Redis's ``used_memory_peak`` (it cannot be reset)."""
    image = photo(640, 480, seed=7)
    png = io.BytesIO()
    image.save(png, "PNG")
    client.process(jpeg(image), [TRACED_SPEC], grid=(1, workers), format="JPEG")
    client.process(png.getvalue(), [BIG_SPEC], grid=(1, workers), format="TIFF")


def measure_memory(args: argparse.Namespace, sizes: Sizes, im: Images) -> list[dict[str, Any]]:
    """Each memory job's peaks per process and its timeline, on a cluster of its own.

    A fresh cluster: valkey cannot reset its ``used_memory_peak``, so only on a new server
    do the jobs (smallest first) each raise it; every process's ``VmHWM`` is reset per job.
    """
    work = Path(tempfile.mkdtemp(prefix="tilechord-bench-"))
    try:
        jobs = memory_jobs(args, sizes, im, work)
        pixels = max(Settings().max_pixels, *(job.pixels for job in jobs))  # raised for the big case
        settings = Settings(workers=args.workers, job_timeout=900, max_pixels=pixels)
        print(f"\nPeak memory per process: a fresh cluster (max_pixels {pixels:,}) ...", flush=True)
        with LocalCluster(settings, workers=args.workers) as cluster:
            assert cluster.pool is not None and cluster.redis is not None
            pool, server = cluster.pool, cluster.redis
            client, r = Client(cluster.settings), redis.Redis.from_url(cluster.url)
            watch = MemoryWatch({
                "client": lambda: [os.getpid()],
                "Redis": lambda: [server.pid] if server.pid else [],
                "worker": lambda: [pool.pid] if pool.pid else [],
                "pool": pool.child_pids,
            }, r)  # fmt: skip
            warm_up(client, args.workers)
            cases = [memory_case(client, watch, job, args.workers) for job in jobs]
            client.close()
            r.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cases


def print_report(res: Results, sizes: Sizes) -> None:
    print()
    print(table(res.rows))
    cheap = next(row for row in res.rows if row.case.startswith("cheap"))
    assert cheap.tilechord_s is not None
    print_breakdown(res.profile, cheap.tilechord_s)
    print_timeline(
        f"Timeline of one {sizes.small[0]}x{sizes.small[1]} sharpen job (latency case)", res.small_events
    )
    load, cores = res.load, os.cpu_count() or 1
    print(
        f"\nOther processes used {load['other_cpu_s']:.1f} CPU-s during the {load['wall_s']:.0f} s of "
        f"measurements ({load['other_cpu_s'] / load['wall_s'] / cores:.0%} of the {cores} cores; ours: "
        f"{load['ours_cpu_s']:.1f} CPU-s); load average at the end: {loadavg()}"
    )
    if load["other_cpu_s"] / load["wall_s"] > 0.1:
        print("  WARNING: the machine was not quiet; numbers are noisier than usual, re-run when it is.")
    for row in res.rows:
        if row.verified is not None:
            print(f"  check: {row.case.split(':')[0]}: tilechord vs Pillow output: {row.verified}")
    print_memory(res.memory)


def print_memory(cases: list[dict[str, Any]]) -> None:
    """The memory table and the memory jobs' timelines."""
    print(
        "\nPeak resident memory of one job, per process (VmHWM, reset just before the job), beside plain "
        "Pillow doing the same job in a fresh process; largest = tilechord's largest single process, "
        "all = every process summed (Redis counted by its RSS):"
    )
    print(grid_text(*memory_table(cases)))
    print("Resident before each job (the peaks include it; the client is this script, with its images):")
    for case in cases:
        print(baseline_line(case))
    print("\nTimeline of each memory job (Celery task events; one job each):")
    for case in cases:
        print("\n".join(timeline_lines(case)))
        print(f"    tilechord vs Pillow output: {case['verified']}")


def write_json(path: Path, args: argparse.Namespace, res: Results, total: float) -> None:
    grid = args.grid
    profile = {k: v for k, v in res.profile.items() if k != "timeline"}
    report = {
        "machine": res.info,
        "mode": "quick" if args.quick else "full",
        "repeat": args.repeat,
        "warmup": args.warmup,
        "workers": args.workers,
        "grid": grid if isinstance(grid, str) else f"{grid[0]}x{grid[1]}",
        "rows": [{**asdict(row), "verdict": row.verdict} for row in res.rows],
        "phases": profile,
        "timeline": res.profile["timeline"],
        "timeline_small": res.small_events,
        "cpu": res.load,
        "memory": res.memory,
        "total_s": total,
    }
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"Wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    res = measure(args, sizes, build_images(sizes))
    print_report(res, sizes)
    total = time.perf_counter() - began
    print(f"\nTotal time {total:.1f} s")
    if args.json is not None:
        write_json(args.json, args, res, total)
    differs = any(case["verified"].startswith("DIFFERENT") for case in res.memory)
    return 1 if differs or any(row.verdict.startswith("FAIL") for row in res.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
