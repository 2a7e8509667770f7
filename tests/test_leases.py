"""Leases on one machine: a frozen worker's tile runs again elsewhere, and the job stays right.

Each worker here is a whole ``celery worker`` process group (:class:`WorkerPool` starts it
in a session of its own), frozen with SIGSTOP to the group, as a machine that hangs.  The
fault tests across real network links are in ``tests/test_hosts.py``; this file holds what
needs no namespace: the exact order of events when a tile runs twice.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from images import encoded
from PIL import Image
from procs import wait_for
from workers import own_cluster, tilechord_keys

from tilechord import Client
from tilechord.local import EmbeddedRedis, WorkerPool

pytestmark = [pytest.mark.slow]


@pytest.fixture
def three_workers() -> Iterator[tuple[EmbeddedRedis, list[WorkerPool], Client]]:
    """A Redis and three one-process workers of this test's own: freezing them harms no other test."""
    with own_cluster(3, loglevel="INFO", job_timeout=120) as cluster:
        yield cluster


def with_signal(pool: WorkerPool, sig: signal.Signals) -> None:
    assert pool.pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pool.pid, sig)  # the whole process group: main process and pool children


def half_dark_half_light(width: int = 200, height: int = 100) -> Image.Image:
    image = Image.new("RGB", (width, height), (20, 30, 40))
    image.paste((230, 220, 210), (width // 2, 0, width, height))
    return image


@pytest.mark.timeout(180)
def test_a_tile_finished_twice_counts_once_and_the_merge_waits_for_the_tile_still_running(
    three_workers: tuple[EmbeddedRedis, list[WorkerPool], Client],
) -> None:
    server, pools, own = three_workers
    image = half_dark_half_light()
    # the dark tile takes 6 s, the light one 45 s: the dark one is frozen, runs again on the
    # idle worker, and its frozen first run wakes and finishes too, while the light one runs
    job = own.submit(encoded(image, "PNG"), ["test_slow_light:dark=6,light=45", "invert"], grid=(2, 1))
    assert wait_for(lambda: len(job.runs()) == 2, timeout=30), job.runs()
    first = dict(job.runs())
    frozen = {pool.nodename: pool for pool in pools}[first["edit-0"]]
    with_signal(frozen, signal.SIGSTOP)
    stopped = time.monotonic()
    # the lease lapses (10 s unrenewed) and another worker takes the dark tile
    assert wait_for(lambda: len(job.runs()) == 3, timeout=25), job.runs()
    rerun = job.runs()[2]
    assert rerun[0] == "edit-0" and rerun[1] not in (first["edit-0"], first["edit-1"])
    assert time.monotonic() - stopped < 20  # the 10 s lease, not kombu's hour of visibility
    with_signal(frozen, signal.SIGCONT)  # it wakes past its sleep and finishes the dark tile too
    # both runs of the dark tile finish; the light one still runs: one tile of two is done
    assert wait_for(lambda: job.progress() == (1, 2), timeout=15)
    time.sleep(7)  # the re-run's 6 s too
    assert job.progress() == (1, 2), "a tile that ran twice must count once"
    assert job.status in ("STARTED", "RETRY"), job.status  # the merge waits: it has not finished
    data = job.get(timeout=60)
    expected = image.point(lambda v: 255 - v)
    assert Image.open(io.BytesIO(data)).tobytes() == expected.tobytes()
    r = redis.Redis.from_url(server.url)
    try:
        assert wait_for(lambda: tilechord_keys(r) == [], timeout=10), tilechord_keys(r)
    finally:
        r.close()
    for pool in pools:
        assert pool.running, f"{pool.nodename} died"
