#!/usr/bin/env python
"""Benchmark tilechord against plain single-process Pillow doing the same whole job.

Starts its own Redis and worker pool (a :class:`tilechord.local.LocalCluster` with two
workers), builds deterministic photo-like test images, and measures, for each case, the
median of several runs after a warm-up:

* tilechord: ``Client.process(jpeg_bytes, [op], grid=..., format="JPEG")``, i.e. submit,
  split, edit tiles on the workers, merge, encode, and fetch the result;
* Pillow: decode the same JPEG bytes, apply the same Pillow call the operation makes,
  and encode a JPEG with the options tilechord uses for a JPEG input (the input's
  quantization tables and subsampling, see ``codec._save_options``).

The two are run alternately (tilechord, Pillow, tilechord, ...) so that drift hurts both
alike, and each case checks once that both produce the same JPEG bytes (or at least the
same pixels).  Redis traffic is read from the server's own ``INFO stats`` counters.
Finally a phase breakdown of the 24 MP gaussian job shows where tilechord's time goes:
the worker timeline from Celery task events, and each data-path step run by hand.
The throughput case also reads, from ``/proc``, the CPU that the client, Redis, the
worker's main process and its pool used per run: all of it over the cores is the least
wall time any schedule could give that run, hence a bound on its ratio.

Run from the project root with the project's virtualenv::

    python scripts/bench.py --quick          # smoke test, well under a minute
    python scripts/bench.py --json out.json  # the full run, under 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery.signals import before_task_publish
from kombu.serialization import dumps
from PIL import Image, ImageDraw, ImageFilter, ImageOps, JpegImagePlugin

from tilechord import Client, Settings
from tilechord.imaging import codec
from tilechord.imaging.geometry import tiles
from tilechord.local import LocalCluster
from tilechord.worker import tasks
from tilechord.worker.keys import JobKeys, new_job_id

T = TypeVar("T")

#: The short latency case runs this many times ``--repeat``: one run takes milliseconds.
LATENCY_FACTOR = 5
#: Largest task message allowed (bytes on the wire, as kombu's Redis transport stores it).
MESSAGE_LIMIT = 8 * 1024
JPEG_QUALITY = 90

PillowEdit = Callable[[Image.Image], Image.Image]

# The Pillow call each tilechord operation makes (see src/tilechord/ops/builtin.py).
PILLOW_EDITS: dict[str, PillowEdit] = {
    "median:size=5": lambda im: im.filter(ImageFilter.MedianFilter(5)),
    "gaussian_blur:radius=8": lambda im: im.filter(ImageFilter.GaussianBlur(8)),
    "invert": ImageOps.invert,
    "sharpen": lambda im: im.filter(ImageFilter.SHARPEN),
}


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


@dataclass
class Row:
    """One line of the results table."""

    case: str
    tilechord: str  # shown in the tilechord column
    pillow: str  # shown in the Pillow column
    value: str  # shown in the ratio column
    target: str
    passed: bool | None  # None: reported, no target
    tilechord_s: float | None = None
    pillow_s: float | None = None
    ratio: float | None = None
    verified: str | None = None  # how tilechord's output was checked against Pillow's
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.verified is not None and self.verified.startswith("DIFFERENT"):
            return "FAIL (output differs)"
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "MISS"


# -- test images ---------------------------------------------------------------------------


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic photo-like RGB image: gradients, shapes, fine noise, softened.

    Everything comes from Pillow's deterministic drawing and from ``random.Random(seed)``
    (never C ``rand()``), so the same arguments give the same pixels on every run.
    """
    rng = random.Random(seed)
    size = (width, height)
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
        ),
    )
    draw = ImageDraw.Draw(base)
    for _ in range(min(400, max(3, width * height // 60_000))):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(1, max(2, width // 3))
        y1 = y0 + rng.randrange(1, max(2, height // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), outline=colour, width=3)
    noise = Image.frombytes("L", size, rng.randbytes(width * height)).convert("RGB")
    return Image.blend(base, noise, 0.12).filter(ImageFilter.SMOOTH)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def megapixels(size: tuple[int, int]) -> str:
    return f"{size[0] * size[1] / 1e6:.1f} MP ({size[0]}x{size[1]})"


# -- the Pillow baseline -------------------------------------------------------------------


def jpeg_options(source: Image.Image, image: Image.Image) -> dict[str, Any]:
    """The JPEG options tilechord's ``codec._save_options`` picks, spelled out for Pillow."""
    options: dict[str, Any] = {}
    info = source.info
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if info.get("exif"):
        options["exif"] = info["exif"]
    if "dpi" in info:
        options["dpi"] = info["dpi"]
    if source.format == "JPEG" and image.mode == source.mode:
        options["qtables"] = source.quantization  # type: ignore[attr-defined]
        sampling = JpegImagePlugin.get_sampling(source)
        if sampling != -1:
            options["subsampling"] = sampling
    else:
        options["quality"] = 95
    return options


def pillow_job(data: bytes, edit: PillowEdit) -> bytes:
    """The whole job in one process: decode the JPEG bytes, edit, encode a JPEG."""
    source = Image.open(io.BytesIO(data))
    source.load()
    out = edit(source)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", **jpeg_options(source, out))
    return buffer.getvalue()


def same_output(ours: bytes, theirs: bytes) -> str:
    """``identical bytes``, ``identical pixels`` or ``DIFFERENT ...``."""
    if ours == theirs:
        return "identical bytes"
    a, b = Image.open(io.BytesIO(ours)), Image.open(io.BytesIO(theirs))
    if a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes():
        return "identical pixels"
    return f"DIFFERENT: tilechord {a.mode} {a.size}, Pillow {b.mode} {b.size}"


# -- timing --------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


@dataclass
class Pair:
    tilechord: list[float]
    pillow: list[float]
    tilechord_out: Any
    pillow_out: Any

    @property
    def tc(self) -> float:
        return statistics.median(self.tilechord)

    @property
    def pil(self) -> float:
        return statistics.median(self.pillow)


def compare(tc: Callable[[], T], pil: Callable[[], T], runs: int, warmup: int) -> Pair:
    """Warm both up, then time them alternately *runs* times each."""
    tc_out: Any = None
    pil_out: Any = None
    for _ in range(warmup):
        tc_out = tc()
        pil_out = pil()
    tc_times: list[float] = []
    pil_times: list[float] = []
    for _ in range(runs):
        elapsed, tc_out = timed(tc)
        tc_times.append(elapsed)
        elapsed, pil_out = timed(pil)
        pil_times.append(elapsed)
    return Pair(tc_times, pil_times, tc_out, pil_out)


def secs(value: float) -> str:
    return f"{value:.3f} s"


def runs_detail(pair: Pair) -> dict[str, Any]:
    return {
        "tilechord_runs_s": [round(t, 4) for t in pair.tilechord],
        "pillow_runs_s": [round(t, 4) for t in pair.pillow],
    }


# -- cases -----------------------------------------------------------------------------------


def speed_case(
    client: Client,
    label: str,
    spec: str,
    data: bytes,
    size: tuple[int, int],
    grid: str | tuple[int, int],
    minimum: float | None,
    runs: int,
    warmup: int,
) -> Row:
    """A big image, one operation: tilechord seconds vs Pillow seconds."""
    edit = PILLOW_EDITS[spec]
    used = client.plan(data, [spec], grid, "JPEG")[1]
    pair = compare(
        lambda: client.process(data, [spec], grid=grid, format="JPEG"),
        lambda: pillow_job(data, edit),
        runs,
        warmup,
    )
    ratio = pair.pil / pair.tc
    target = "report" if minimum is None else f">= {minimum:.1f}x"
    return Row(
        case=f"{label}: {spec}, {megapixels(size)}, grid {used}",
        tilechord=secs(pair.tc),
        pillow=secs(pair.pil),
        value=f"{ratio:.2f}x",
        target=target,
        passed=None if minimum is None else ratio >= minimum,
        tilechord_s=pair.tc,
        pillow_s=pair.pil,
        ratio=ratio,
        verified=same_output(pair.tilechord_out, pair.pillow_out),
        details={"grid": str(used), "input_bytes": len(data), **runs_detail(pair)},
    )


def latency_case(
    client: Client, data: bytes, size: tuple[int, int], grid: str | tuple[int, int], runs: int, warmup: int
) -> Row:
    spec = "sharpen"
    edit = PILLOW_EDITS[spec]
    used = client.plan(data, [spec], grid, "JPEG")[1]
    pair = compare(
        lambda: client.process(data, [spec], grid=grid, format="JPEG"),
        lambda: pillow_job(data, edit),
        runs,
        warmup,
    )
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
        details={"extra_ms": extra_ms, "grid": str(used), **runs_detail(pair)},
    )


def tilechord_batch(client: Client, sources: list[bytes], spec: str, inflight: int | None) -> list[bytes]:
    """tilechord.map over every source (small images travel several to a task); results in order."""
    results: list[bytes] = [b""] * len(sources)
    for outcome in client.map(sources, [spec], grid="auto", format="JPEG", jobs=inflight, timeout=120):
        results[outcome.index] = outcome.unwrap()
    return results


def throughput_case(
    client: Client,
    sources: list[bytes],
    size: tuple[int, int],
    inflight: int | None,
    runs: int,
    warmup: int,
    cpu: CpuByRole,
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

    pair = compare(
        cpu.measure(lambda: tilechord_batch(client, sources, spec, inflight)), pillow_loop, runs, warmup
    )
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
    return [row, cpu_bound_row(cpu.mean(skip=warmup), statistics.mean(pillow_cpu[warmup:]), pair)]


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


def traffic_case(
    client: Client, r: redis.Redis, spec: str, data: bytes, size: tuple[int, int], grid: str | tuple[int, int]
) -> Row:
    """Bytes written into (and read from) Redis during one whole job, by Redis's own count."""
    used = client.plan(data, [spec], grid, "JPEG")[1]
    raw = size[0] * size[1] * 3  # RGB
    time.sleep(0.3)  # let the previous job's stragglers (result writes, events) settle
    in0, out0 = net_bytes(r)
    client.process(data, [spec], grid=grid, format="JPEG")
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


# -- task message sizes (client side) ------------------------------------------------------


def wire_size(body: Any, headers: dict[str, Any], properties: dict[str, Any]) -> int:
    """A task message's size as kombu's Redis transport stores it (json, base64 body)."""
    content_type, encoding, payload = dumps(body, serializer="json")  # type: ignore[no-untyped-call]
    raw = payload.encode() if isinstance(payload, str) else payload
    envelope = {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            **properties,
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "tilechord"},
            "delivery_tag": "00000000-0000-0000-0000-000000000000",
        },
    }
    return len(json.dumps(envelope, default=str))


class MessageSizes:
    """Records the wire size of every task message this process publishes (the split)."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        before_task_publish.connect(self._record, weak=False)

    def _record(
        self,
        body: Any = None,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if headers is None:
            return
        task = str(headers.get("task"))
        size = wire_size(body, headers, properties or {})
        with self._lock:
            self.sizes[task] = max(self.sizes.get(task, 0), size)

    def rows(self) -> list[Row]:
        split = self.sizes.get("tilechord.split")
        return [
            Row(
                case="largest task message: split (every job of this run, client side)",
                tilechord="-" if split is None else f"{split:,} B",
                pillow="-",
                value="-" if split is None else f"{split:,} B",
                target=f"< {MESSAGE_LIMIT:,} B",
                passed=None if split is None else split < MESSAGE_LIMIT,
                details={"client_side_max_bytes": dict(self.sizes)},
            ),
            Row(
                case="largest task message: edit, merge (published by the workers)",
                tilechord="checked by tests/test_workflow.py",
                pillow="-",
                value="-",
                target=f"< {MESSAGE_LIMIT:,} B",
                passed=None,
            ),
        ]


# -- where the time goes ---------------------------------------------------------------------


class EventLog:
    """Celery task events (received/started/succeeded) from the workers, on a thread."""

    def __init__(self, client: Client) -> None:
        self.app = client.app
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="bench-events", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    @contextmanager
    def capturing(self) -> Iterator[EventLog]:
        self._thread.start()
        self._ready.wait(10)
        time.sleep(0.5)  # the fanout subscription must exist before the job starts
        try:
            yield self
        finally:
            time.sleep(0.5)
            if self._receiver is not None:
                self._receiver.should_stop = True
            self._thread.join(5)


def timeline(events: list[dict[str, Any]], job_id: str, t0: float, t_end: float) -> list[dict[str, Any]]:
    """Per task of the job: sent/received/started/succeeded in ms after submit, and runtime.

    Every task of a job has an id of its own (``<job>``, ``<job>-edit-i``, ``<job>-merge``);
    an event is attributed to the task last named for its id.  ``chord out`` marks when the
    split had sent its chord (the first edit's ``sent``).
    """
    current: dict[str, str] = {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for ev in events:
        uuid, kind = ev.get("uuid"), str(ev.get("type", ""))
        if not isinstance(uuid, str) or not kind.startswith("task-"):
            continue
        if ev.get("name") and (uuid.startswith(job_id) or ev.get("root_id") == job_id):
            current[uuid] = str(ev["name"]).removeprefix("tilechord.")
        name = current.get(uuid)
        if name is None:
            continue
        if name == "edit":
            name = f"edit tile {int(uuid.rsplit('-', 1)[-1]) + 1}"
        entry = rows.setdefault((uuid, name), {"task": name})
        entry.setdefault(kind.removeprefix("task-"), round((ev["timestamp"] - t0) * 1000, 1))
        if "runtime" in ev:
            entry["runtime_ms"] = round(ev["runtime"] * 1000, 1)
    out = sorted(rows.values(), key=lambda e: min(v for k, v in e.items() if k not in ("task", "runtime_ms")))
    edits_sent = [e["sent"] for e in out if e["task"].startswith("edit") and "sent" in e]
    for e in out:
        if e["task"] == "split" and edits_sent:
            e["chord out"] = min(edits_sent)  # the split has sent its chord
    out.append({"task": "client has the result", "done": round((t_end - t0) * 1000, 1)})
    return out


def traced_job(client: Client, data: bytes, spec: str, grid: str | tuple[int, int]) -> list[dict[str, Any]]:
    """Run one job while recording the workers' task events; return its timeline."""
    log = EventLog(client)
    with log.capturing():
        t0 = time.time()
        job = client.submit(data, [spec], grid=grid, format="JPEG")
        job.get(timeout=120)
        t_end = time.time()
    return timeline(log.events, job.id, t0, t_end)


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


class Phases:
    """Accumulates the time of named data-path steps: ``with phases("name"): ...``."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - started) * 1000


def phase_breakdown(
    client: Client, spec: str, data: bytes, grid: str | tuple[int, int], expected: bytes
) -> dict[str, Any]:
    """Each step of tilechord's data path for one job, run by hand in this process.

    The same calls as ``tasks.py`` (``codec``, ``BlobStore``, ``Pipeline``) on the
    cluster's Redis, in the same order and with the same choice of path (a JPEG in at
    most ``DECODE_IN_PLACE_TILES`` tiles is decoded by each edit; otherwise the split
    stores raw tiles), one after the other on one core: this is the work, not the
    parallel schedule (see the event timeline for that).  Steps in parentheses are
    asides, not part of the job: what parts of ``pack_raw``/``unpack_raw`` cost alone.
    """
    store = client.store
    max_pixels = client.settings.max_pixels
    step = Phases()
    with step("client: plan (validate)"):
        pipeline, used, info, fmt = client.plan(data, [spec], grid, "JPEG")
    keys = JobKeys(new_job_id())
    in_place = (
        info.format in tasks.DECODE_IN_PLACE_FORMATS
        and 1 < used.cols * used.rows <= tasks.DECODE_IN_PLACE_TILES
    )
    edit_ms: list[float] = []
    try:
        with step("client: SET source"):
            store.open_jobs([(keys, data)])
        with step("split: GET source"):
            source = store.get_pixels(keys, keys.source)
        parts = tiles(info.size[0], info.size[1], used, pipeline.halo)
        if in_place:
            with step("split: read header"):
                codec.inspect_source(source, max_pixels)
        else:
            with step("split: decode JPEG"):
                image = codec.decode(source, max_pixels)
            for tile in parts:
                with step("split: crop tile"):
                    piece = image.crop(tile.cut)
                with step("split: pack_raw"):
                    packed = codec.pack_raw(piece)
                with step("split: SET tile"):
                    store.put(keys, keys.tile(tile.index), packed)
                with step("(aside) tobytes alone"):
                    pixels = piece.tobytes()
                with step("(aside) b''.join alone"):
                    b"".join((b"header", pixels))
                del pixels, packed, piece
            del image
        for tile in parts:
            started = time.perf_counter()
            if in_place:
                with step("edit: GET source"):
                    own = store.get(keys, keys.source)
                with step("edit: decode JPEG"):
                    whole = codec.decode(own, max_pixels)
                with step("edit: crop tile"):
                    piece = whole.crop(tile.cut)
                del own, whole
            else:
                with step("edit: GET tile"):
                    blob = store.get_pixels(keys, keys.tile(tile.index))
                with step("edit: unpack_raw"):
                    piece, _ = codec.unpack_raw(blob)
                del blob
            with step("edit: filter"):
                out = pipeline.apply(piece)
            left, top = tile.box[0] - tile.cut[0], tile.box[1] - tile.cut[1]
            with step("edit: crop core"):
                core = out.crop((left, top, left + tile.size[0], top + tile.size[1]))
            with step("edit: pack_raw"):
                packed = codec.pack_raw(core, {"box": list(tile.box)})
            with step("edit: SET edited"):
                store.put(keys, keys.edited(tile.index), packed)
            with step("edit: progress INCR"):
                store.tile_done(keys)
            edit_ms.append((time.perf_counter() - started) * 1000)
            del piece, out, core, packed
        with step("merge: new canvas"):
            canvas = Image.new("RGB", pipeline.output_size(info.size))
        for tile in parts:
            with step("merge: GET edited"):
                view = store.get_pixels(keys, keys.edited(tile.index))
            with step("merge: unpack_raw"):
                piece, extra = codec.unpack_raw(view)
            offset = len(codec.RAW_MAGIC) + 4 + int.from_bytes(view[len(codec.RAW_MAGIC) :][:4], "big")
            with step("(aside) frombuffer alone"):
                Image.frombuffer(piece.mode, piece.size, view[offset:], "raw", piece.mode, 0, 1)  # type: ignore[arg-type]
            with step("merge: paste"):
                canvas.paste(piece, (extra["box"][0], extra["box"][1]))
            del view, piece
        with step("merge: GET source again"):
            again = store.get(keys, keys.source)
        with step("merge: open source header"):
            original = Image.open(io.BytesIO(again))
        with step("merge: encode JPEG"):
            result = codec.encode(canvas, fmt, original)
        with step("merge: store result and notify"):
            store.finish(keys, result)
        with step("client: GET result and clean up"):
            (got,) = store.collect([(keys, True)])
        assert got is not None
    finally:
        store.cleanup(keys)
    groups: dict[str, float] = {}
    for name, ms in step.ms.items():
        if not name.startswith("("):
            group = name.split(":")[0]
            groups[group] = groups.get(group, 0.0) + ms
    critical = groups["client"] + groups["split"] + max(edit_ms) + groups["merge"]
    return {
        "grid": str(used),
        "tiles": len(parts),
        "halo": pipeline.halo,
        "tile_raw_mb": [round((t.cut[2] - t.cut[0]) * (t.cut[3] - t.cut[1]) * 3 / 1e6, 1) for t in parts],
        "decode": "in each edit" if in_place else "once, in the split",
        "steps_ms": {k: round(v, 1) for k, v in step.ms.items()},
        "totals_ms": {k: round(v, 1) for k, v in groups.items()},
        "edit_per_tile_ms": [round(v, 1) for v in edit_ms],
        "critical_path_ms": round(critical, 1),
        "same_as_pillow": same_output(got, expected),
    }


# -- machine and report ----------------------------------------------------------------------


def machine(r: redis.Redis) -> dict[str, Any]:
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


def table(rows: list[Row]) -> str:
    head = ("case", "tilechord", "Pillow", "ratio", "target", "result")
    cells = [head] + [(r.case, r.tilechord, r.pillow, r.value, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(text.ljust(width) for text, width in zip(c, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def print_timeline(title: str, events: list[dict[str, Any]]) -> None:
    print(f"\n  {title} (Celery task events, ms after submit):")
    for e in events:
        parts = [
            f"{k} {e[k]:.1f}"
            for k in ("sent", "received", "started", "chord out", "succeeded", "done")
            if k in e
        ]
        if "runtime_ms" in e:
            parts.append(f"runtime {e['runtime_ms']:.1f}")
        print(f"    {e['task']:<24} " + ", ".join(parts))


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def print_breakdown(profile: dict[str, Any], events: list[dict[str, Any]], measured_s: float) -> None:
    print(
        f"\nWhere the time goes: {profile['case']}, grid {profile['grid']}, halo {profile['halo']} px, "
        f"tiles of {' + '.join(f'{mb} MB' for mb in profile['tile_raw_mb'])} raw, "
        f"source decoded {profile['decode']}"
    )
    print_timeline("Worker timeline of one job", events)
    print("\n  Each data-path step run by hand in one process (ms, summed over tiles):")
    for name, ms in profile["steps_ms"].items():
        print(f"    {name:<32} {ms:9.1f}")
    totals = profile["totals_ms"]
    print("  Totals: " + ", ".join(f"{k} {v:.1f}" for k, v in totals.items()))
    print(
        f"  Edit per tile: {', '.join(f'{v:.1f}' for v in profile['edit_per_tile_ms'])} ms; critical path "
        f"(client + split + slowest edit + merge, no Celery) {profile['critical_path_ms']:.1f} ms; "
        f"measured end to end (median) {measured_s * 1000:.1f} ms"
    )
    print(f"  Hand-run result vs Pillow: {profile['same_as_pillow']}")


# -- main --------------------------------------------------------------------------------------


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
            "faster). Ends with a phase breakdown of the 24 MP gaussian job."
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    grid: str | tuple[int, int] = args.grid
    runs, warmup = args.repeat, args.warmup

    print("Building test images ...", flush=True)
    large_image = photo(*sizes.large, seed=24)
    large = jpeg(large_image)
    del large_image
    medium = jpeg(photo(*sizes.medium, seed=12))
    small = jpeg(photo(*sizes.small, seed=5))
    batch = [jpeg(photo(*sizes.batch_image, seed=1000 + i)) for i in range(sizes.batch_count)]

    settings = Settings(workers=args.workers, job_timeout=300)
    messages = MessageSizes()
    rows: list[Row] = []
    print(
        f"Starting a local cluster (valkey-server + celery worker, {args.workers} processes) ...", flush=True
    )
    with LocalCluster(settings, workers=args.workers) as cluster:
        client = Client(cluster.settings)
        r = redis.Redis.from_url(cluster.url)
        info = machine(r)
        print(
            f"\nMachine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable), {info['cpu_model']}; "
            f"{info['platform']}\nPython {info['python']}, Pillow {info['pillow']}, Celery {info['celery']}, "
            f"kombu {info['kombu']}, redis-py {info['redis_py']}, {info['server']}, "
            f"tilechord {info['tilechord']}; {args.workers} workers"
        )
        mode = "quick" if args.quick else "full"
        print(f"Mode {mode}: median of {runs} run(s) after {warmup} warm-up(s) per case", flush=True)
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

        big = "24 MP" if not args.quick else "quick"
        mid = "12 MP" if not args.quick else "quick"
        plan: list[tuple[str, Callable[[], Row | list[Row]]]] = [
            ("heavy filter", lambda: speed_case(
                client, f"heavy ({mid})", "median:size=5", medium, sizes.medium, grid, 1.8, runs, warmup)),
            ("ceiling", lambda: ceiling_case(  # one run: each takes as long as the heavy case
                f"heavy, {mid} each", "median:size=5", [medium] * args.workers, args.workers, 1)),
            ("cheap filter", lambda: speed_case(
                client, f"cheap ({big})", "gaussian_blur:radius=8", large, sizes.large, grid, 1.0, runs,
                warmup)),
            ("pixel op", lambda: speed_case(
                client, f"pixel ({big})", "invert", large, sizes.large, grid, None, runs, warmup)),
            ("latency", lambda: latency_case(
                client, small, sizes.small, "auto", runs * LATENCY_FACTOR, warmup)),
            ("throughput", lambda: throughput_case(
                client, batch, sizes.batch_image, args.inflight, runs, warmup, roles)),
            ("ceiling", lambda: ceiling_case(
                f"throughput, {len(batch)} images", "sharpen", batch, args.workers, runs)),
            ("traffic", lambda: traffic_case(
                client, r, "gaussian_blur:radius=8", large, sizes.large, grid)),
            ("traffic", lambda: traffic_case(client, r, "median:size=5", medium, sizes.medium, grid)),
        ]  # fmt: skip
        for name, run in plan:
            started = time.perf_counter()
            out = run()
            case_rows = out if isinstance(out, list) else [out]
            rows += case_rows
            row = case_rows[0]
            print(f"  {name:<13} {time.perf_counter() - started:6.1f} s  {row.case}: {row.value} "
                  f"[{row.verdict}]", flush=True)  # fmt: skip
        rows.extend(messages.rows())

        # Where the time goes, for the cheap-filter case.
        spec = "gaussian_blur:radius=8"
        expected = pillow_job(large, PILLOW_EDITS[spec])
        profile = phase_breakdown(client, spec, large, grid, expected)
        profile["case"] = f"{spec} on {megapixels(sizes.large)}"
        events = traced_job(client, large, spec, grid)
        small_events = traced_job(client, small, "sharpen", "auto")
        load = meter.report()
        client.close()
        r.close()

    print()
    print(table(rows))
    cheap = next(row for row in rows if row.case.startswith("cheap"))
    assert cheap.tilechord_s is not None
    print_breakdown(profile, events, cheap.tilechord_s)
    print_timeline(
        f"Timeline of one {sizes.small[0]}x{sizes.small[1]} sharpen job (latency case)", small_events
    )
    cores = os.cpu_count() or 1
    print(
        f"\nOther processes used {load['other_cpu_s']:.1f} CPU-s during the {load['wall_s']:.0f} s of "
        f"measurements ({load['other_cpu_s'] / load['wall_s'] / cores:.0%} of the {cores} cores; ours: "
        f"{load['ours_cpu_s']:.1f} CPU-s); load average at the end: {loadavg()}"
    )
    if load["other_cpu_s"] / load["wall_s"] > 0.1:
        print("  WARNING: the machine was not quiet; numbers are noisier than usual, re-run when it is.")
    failed = [row for row in rows if row.verdict.startswith("FAIL")]
    for row in rows:
        if row.verified is not None:
            print(f"  check: {row.case.split(':')[0]}: tilechord vs Pillow output: {row.verified}")
    total = time.perf_counter() - began
    print(f"\nTotal time {total:.1f} s")

    if args.json is not None:
        report = {
            "machine": info,
            "mode": mode,
            "repeat": runs,
            "warmup": warmup,
            "workers": args.workers,
            "grid": grid if isinstance(grid, str) else f"{grid[0]}x{grid[1]}",
            "rows": [{**asdict(row), "verdict": row.verdict} for row in rows],
            "phases": profile,
            "timeline": events,
            "timeline_small": small_events,
            "cpu": load,
            "total_s": total,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"Wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
