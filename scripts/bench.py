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

Run from the project root with the project's virtualenv::

    python scripts/bench.py --quick          # smoke test, well under a minute
    python scripts/bench.py --json out.json  # the full run, under 5 minutes on 2 cores

The pieces live in ``scripts/benchlib/``; this file is the command line and the order
of the cases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

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
from benchlib.measure import Row, table
from benchlib.messages import MessageSizes
from benchlib.phases import Traced, breakdown, traced_jobs
from benchlib.pillow import PILLOW_EDITS, jpeg, megapixels, photo, pillow_job
from benchlib.report import machine, print_breakdown, print_machine, print_timeline, tile_raw_mb
from tilechord import Client, Settings
from tilechord.local import LocalCluster

#: The case whose job the phase breakdown traces: a cheap filter, where overheads show.
TRACED_SPEC = "gaussian_blur:radius=8"


@dataclass(frozen=True)
class Sizes:
    """Image sizes and counts of one run mode (full or ``--quick``)."""

    large: tuple[int, int]  # "24 MP"
    medium: tuple[int, int]  # "12 MP"
    small: tuple[int, int]  # latency case
    batch_image: tuple[int, int]
    batch_count: int


FULL = Sizes(
    large=(6000, 4000), medium=(4240, 2832), small=(512, 512), batch_image=(256, 256), batch_count=200
)
QUICK = Sizes(
    large=(1500, 1000), medium=(1060, 708), small=(512, 512), batch_image=(256, 256), batch_count=40
)


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
            "faster). Ends with a phase breakdown of the 24 MP gaussian job, from the Celery task "
            "events of --repeat real jobs."
        ),
        epilog="The full run takes about 2-3 minutes on 2 cores; --quick about 20 seconds.",
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
    return Results(info, rows, profile, small.events, load)


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
    return 1 if any(row.verdict.startswith("FAIL") for row in res.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
