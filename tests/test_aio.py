"""The asyncio face against the session's real Redis and real Celery workers.

Same results as Pillow on the whole image, the same typed errors before anything is
enqueued, no key left; a thousand jobs awaited on one loop with a handful of threads and
connections; cancelling the awaiting task stops the job's work and deletes its keys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from PIL import Image, ImageOps
from reference import reference, same_image
from workers import tilechord_keys, worker_env

import tilechord
from tilechord import (
    AsyncClient,
    Client,
    InvalidGrid,
    InvalidImage,
    InvalidParameter,
    JobCancelled,
    MapProgress,
    TilechordError,
    UnknownOperation,
    UnsupportedFormat,
    UnsupportedMode,
)
from tilechord.worker.keys import JobKeys

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftovers")]

SLOW = ["test_slow:seconds=30"]  # a tile a worker sleeps in: only a kill frees the worker
FREED_WITHIN = 5.0  # s for a cancel to free the workers (measured under 2; a loaded machine is slower)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aclient(client: Client) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(client) as ac:
        yield ac


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


CASES = [
    ("RGB", "PNG", ["grayscale", "gaussian_blur:radius=3"], (2, 1)),
    ("RGBA", "PNG", ["sharpen", ("box_blur", {"radius": 2})], (3, 2)),
    ("L", "TIFF", ["median:size=5", "invert"], (1, 3)),
    ("P", "PNG", ["mirror"], (2, 2)),
]


@pytest.mark.parametrize(("mode", "fmt", "ops", "grid"), CASES)
async def test_aprocess_equals_pillow_on_the_whole_image(
    aclient: AsyncClient, mode: str, fmt: str, ops: list[Any], grid: tuple[int, int]
) -> None:
    image = photo(160, 120, mode)
    data = await aclient.aprocess(encoded(image, fmt), ops, grid=grid)
    assert same_image(_decoded(data), reference(image, ops))


async def test_aprocess_image_and_asubmit_equal_pillow(aclient: AsyncClient) -> None:
    image = photo(200, 150, "RGB", seed=3)
    ops = ["unsharp_mask", "contrast:factor=1.5"]
    result = await aclient.aprocess_image(image, ops, grid=(3, 2))
    assert same_image(result, reference(image, ops))

    job = await aclient.asubmit(encoded(image, "PNG"), ops, grid=(2, 2), format="TIFF")
    assert job.tiles == 4 and job.status in ("PENDING", "STARTED", "SUCCESS")
    assert job.progress()[1] == 4
    seen: list[tuple[int, int]] = []
    data = await job.get(on_progress=lambda done, total: seen.append((done, total)))
    assert _decoded(data).format == "TIFF" and same_image(_decoded(data), reference(image, ops))
    assert seen[-1] == (4, 4) and seen == sorted(seen)
    assert job.status == "SUCCESS" and job.progress() == (4, 4) and await job.get() == data


def _bad_calls() -> list[tuple[type[TilechordError], Any, Any, dict[str, Any]]]:
    png = encoded(photo(64, 48), "PNG")
    palette = encoded(photo(64, 48, "P"), "PNG")
    return [
        (InvalidImage, b"not an image at all", ["invert"], {}),
        (InvalidImage, encoded(photo(64, 48), "JPEG")[:300], ["invert"], {}),
        (InvalidImage, "/no/such/file.png", ["invert"], {}),
        (UnknownOperation, png, ["gausian_blur"], {}),
        (InvalidParameter, png, ["gaussian_blur:radius=-4"], {}),
        (InvalidParameter, png, ["gaussian_blur:sigma=4"], {}),
        (UnsupportedMode, palette, ["gaussian_blur"], {}),
        (UnsupportedFormat, png, ["invert"], {"format": "NOPE"}),
        (InvalidGrid, png, ["invert"], {"grid": "0x3"}),
        (InvalidGrid, png, ["invert"], {"grid": (64, 64)}),  # over TILECHORD_MAX_TILES
    ]


async def test_bad_input_raises_the_sync_apis_typed_errors_before_anything_is_enqueued(
    client: Client, aclient: AsyncClient, messages: Callable[[], list[dict[str, Any]]]
) -> None:
    for expected, source, ops, options in _bad_calls():
        with pytest.raises(expected) as sync:
            client.submit(source, ops, **options)
        with pytest.raises(expected) as asynchronous:
            await aclient.aprocess(source, ops, **options)
        assert type(asynchronous.value) is type(sync.value)
        assert str(asynchronous.value) == str(sync.value)
    with pytest.raises(InvalidImage, match=r"PIL\.Image\.Image"):
        await aclient.aprocess_image(b"bytes", ["invert"])  # type: ignore[arg-type]
    assert messages() == []  # nothing was sent


async def test_a_failing_task_raises_its_typed_error(aclient: AsyncClient) -> None:
    with pytest.raises(tilechord.JobFailed, match="boom"):
        await aclient.aprocess(encoded(photo(120, 40), "PNG"), ["test_explode:below=200"], grid=(2, 1))


async def test_amap_yields_every_source_as_it_ends(aclient: AsyncClient) -> None:
    images = [photo(90 + 10 * n, 60, seed=n) for n in range(6)]
    sources: list[Any] = [encoded(im, "PNG") for im in images]
    sources.insert(2, b"broken")
    progress: list[MapProgress] = []
    results = [r async for r in aclient.amap(sources, ["sharpen"], grid=(2, 1), jobs=3,
                                             on_progress=progress.append)]  # fmt: skip
    assert sorted(r.index for r in results) == list(range(7))
    by_index = {r.index: r for r in results}
    assert isinstance(by_index[2].error, InvalidImage) and by_index[2].job_id is None
    for n, image in enumerate(images):
        result = by_index[n if n < 2 else n + 1]
        assert result.ok and result.tiles == 2
        assert same_image(_decoded(result.unwrap()), reference(image, ["sharpen"]))
    assert progress[-1].done == 7 and progress[-1].failed == 1 and progress[-1].total == 7
    assert max(p.running for p in progress) <= 3


# --------------------------------------------------------------------------- a thousand at once


def _threads() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def _my_ports() -> set[int]:
    """Local TCP ports of this process's sockets (its fds' inodes, found in /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _my_redis_connections(r: redis.Redis) -> int:
    """This process's connections to Redis, as Redis's CLIENT LIST sees them."""
    ports = _my_ports()
    return sum(int(c["addr"].rsplit(":", 1)[1]) in ports for c in r.client_list())


async def test_a_thousand_concurrent_aprocess_on_one_loop(
    aclient: AsyncClient, redis_client: redis.Redis
) -> None:
    images = [photo(24 + n % 9, 16 + n % 7, seed=n) for n in range(1000)]
    ops = ["invert"]
    peaks = {"threads": 0, "connections": 0}

    async def sample() -> None:
        while True:
            peaks["threads"] = max(peaks["threads"], _threads())
            peaks["connections"] = max(peaks["connections"], _my_redis_connections(redis_client))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    try:
        results = await asyncio.gather(
            *(aclient.aprocess(encoded(image, "PNG"), ops, grid=(1, 1), timeout=240) for image in images)
        )
    finally:
        sampler.cancel()
    peaks["threads"] = max(peaks["threads"], _threads())
    peaks["connections"] = max(peaks["connections"], _my_redis_connections(redis_client))
    for image, data in zip(images, results, strict=True):
        assert _decoded(data).tobytes() == ImageOps.invert(image).tobytes()
    assert peaks["threads"] < 20, peaks
    assert 0 < peaks["connections"] < 50, peaks


# --------------------------------------------------------------------------- cancellation


def _edits_running(client: Client, keys: JobKeys, tiles: int) -> bool:
    return all(AsyncResult(keys.task_id("edit", i), app=client.app).state == "STARTED" for i in range(tiles))


def _small_job_is_served(client: Client, timeout: float) -> None:
    image = photo(64, 48)
    result = client.process_image(image, ["invert"], grid=(1, 1), timeout=timeout)
    assert result.tobytes() == ImageOps.invert(image).tobytes()


async def _wait_running(client: Client, aclient: AsyncClient) -> JobKeys:
    """The keys of the one job whose two edits both run now (waited for, at most 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = list(aclient.waiter.jobs.values()) if aclient._waiter is not None else []
        if len(jobs) == 1 and _edits_running(client, jobs[0].keys, 2):
            return jobs[0].keys
        await asyncio.sleep(0.1)
    raise AssertionError("the slow job's two edits did not both start")


async def _assert_freed(client: Client, redis_client: redis.Redis, keys: JobKeys) -> None:
    """Soon after the cancel: no key of the job, and both workers free for the next job.

    Measured well under 2 s; the bound allows a loaded machine, and is far below the slow
    tiles' 30 s, so a job served within it proves they were killed.
    """
    started = time.monotonic()
    await asyncio.to_thread(_small_job_is_served, client, FREED_WITHIN)  # JobTimeout unless killed
    assert time.monotonic() - started < FREED_WITHIN
    assert tilechord_keys(redis_client) == []
    states = {AsyncResult(keys.task_id("edit", i), app=client.app).state for i in range(2)}
    assert states == {"REVOKED"}, states


async def test_cancelling_the_awaiting_task_stops_the_job_and_deletes_its_keys(
    client: Client, aclient: AsyncClient, redis_client: redis.Redis
) -> None:
    task = asyncio.create_task(aclient.aprocess(encoded(photo(400, 300), "PNG"), SLOW, grid=(2, 1)))
    keys = await _wait_running(client, aclient)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_freed(client, redis_client, keys)


async def test_asyncio_timeout_cancels_the_job(
    client: Client, aclient: AsyncClient, redis_client: redis.Redis
) -> None:
    job = await aclient.asubmit(encoded(photo(400, 300), "PNG"), SLOW, grid=(2, 1))
    await _wait_running(client, aclient)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await job.get()
    await _assert_freed(client, redis_client, job.keys)


async def test_cancel_method_stops_the_job_and_get_raises_job_cancelled(
    client: Client, aclient: AsyncClient, redis_client: redis.Redis
) -> None:
    job = await aclient.asubmit(encoded(photo(400, 300), "PNG"), SLOW, grid=(2, 1))
    await _wait_running(client, aclient)
    waiting = asyncio.create_task(job.get())
    await job.cancel()
    with pytest.raises(JobCancelled, match="cancelled"):
        await waiting
    with pytest.raises(JobCancelled):
        await job.get()
    assert job.status == "FAILURE"
    await _assert_freed(client, redis_client, job.keys)


# --------------------------------------------------------------------------- the module-level API

SCRIPT = textwrap.dedent(
    """
    import asyncio, contextlib, io, threading
    from PIL import Image, ImageOps
    from images import encoded, photo
    import tilechord

    async def main():
        image = photo(120, 80)
        data = await tilechord.aprocess(encoded(image, "PNG"), ["invert"], grid=(2, 1))
        assert Image.open(io.BytesIO(data)).tobytes() == ImageOps.invert(image).tobytes()
        out = await tilechord.aprocess_image(image, ["mirror"], grid=(1, 2))
        assert out.tobytes() == ImageOps.mirror(image).tobytes()
        job = await tilechord.asubmit(encoded(image, "PNG"), ["flip"])
        assert Image.open(io.BytesIO(await job.get())).tobytes() == ImageOps.flip(image).tobytes()
        sources = [encoded(photo(40, 30, seed=n), "PNG") for n in range(5)]
        async with contextlib.aclosing(tilechord.amap(sources, ["invert"], jobs=2)) as results:
            done = sorted([r.index async for r in results if r.ok])
        assert done == [0, 1, 2, 3, 4], done
        with contextlib.suppress(tilechord.UnknownOperation):
            await tilechord.aprocess(encoded(image, "PNG"), ["nope"])
            raise AssertionError("no UnknownOperation")
        print("ok", threading.active_count())

    asyncio.run(main())
    """
)


def test_module_level_functions_use_the_environments_client(redis_url: str, worker: object) -> None:
    env = {**os.environ, **worker_env(redis_url), "TILECHORD_WORKERS": "2"}
    command = [sys.executable, "-c", SCRIPT]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok"), done.stdout


# --------------------------------------------------------------------------- no worker


async def test_no_worker_raises_no_worker_in_seconds(redis_url: str, client: Client) -> None:
    """A Redis database no worker serves: the job cannot start, and the client says so early."""
    base, _, db = redis_url.rpartition("/")
    empty = f"{base}/{int(db or 0) + 1}"
    other = redis.Redis.from_url(empty)
    before = set(other.keys("*"))
    settings = dataclasses.replace(client.configured, redis_url=empty, job_timeout=60)
    lonely = Client(settings)
    try:
        async with AsyncClient(lonely) as ac:
            started = time.monotonic()
            with pytest.raises(tilechord.NoWorker, match="no live worker"):
                await ac.aprocess(encoded(photo(64, 48), "PNG"), ["invert"])
            assert time.monotonic() - started < 30  # well before the job timeout of 60 s
        assert not [k for k in other.keys("tilechord:*") if k not in before]  # its keys are deleted
    finally:
        lonely.close()
        left = [k for k in other.keys("*") if k not in before]  # the queued message, kombu's bindings
        if left:
            other.delete(*left)
        other.close()


async def test_a_client_of_its_own_settings_awaits_through_its_own_methods(client: Client) -> None:
    image = photo(90, 70, seed=7)
    data = encoded(image, "PNG")
    out = await client.aprocess(data, ["invert"], grid=(2, 2), format="PNG")
    assert same_image(Image.open(io.BytesIO(out)), ImageOps.invert(image))
    edited = await client.aprocess_image(image, ["invert"], grid=(3, 1))
    assert same_image(edited, ImageOps.invert(image))
    job = await client.asubmit(data, ["invert"], grid=(1, 2))
    assert same_image(Image.open(io.BytesIO(await job.get())), ImageOps.invert(image))
    results = [r async for r in client.amap([data, data], ["invert"], grid=(2, 1))]
    assert sorted(r.index for r in results) == [0, 1] and all(r.ok for r in results)
