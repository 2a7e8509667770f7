"""Faults done for real: a SIGKILLed worker process, a task that raises, a Redis restarted
mid-job, jobs that time out, processes that die leaving keys (which expire), and load."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from PIL import Image
from procs import wait_for
from reference import pillow
from workers import own_cluster, tilechord_keys

import tilechord
from tilechord import Client, Settings
from tilechord.imaging import raw
from tilechord.local import EmbeddedRedis, WorkerPool
from tilechord.worker.keys import JobKeys


@pytest.mark.slow
def test_job_completes_with_right_pixels_when_a_worker_process_is_killed_mid_tile(
    client: Client, worker: WorkerPool, no_leftovers: None
) -> None:
    image = photo(120, 80, seed=8)
    tile_seconds = 3
    ops = [f"test_slow:seconds={tile_seconds}", "gaussian_blur:radius=2"]
    job = client.submit(encoded(image, "PNG"), ops, grid=(2, 1))
    keys = JobKeys(job.id)
    edits = [AsyncResult(keys.task_id("edit", i), app=client.app) for i in range(2)]
    assert wait_for(lambda: any(r.state == "STARTED" for r in edits), timeout=30), "no tile started"
    running = next(r for r in edits if r.state == "STARTED")
    pid = running.info.get("pid") if isinstance(running.info, dict) else None
    assert pid in worker.child_pids(), (pid, worker.child_pids())
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    data = job.get(timeout=90)
    # Requeued at once on worker loss: the tile runs again from the start (its 3 s) in a new
    # pool child.  Ten times that is far more than it needs, and less than the get's timeout,
    # so a tile that came back late (redelivered by some timeout, not requeued) fails here.
    elapsed = time.monotonic() - started
    assert elapsed < 10 * tile_seconds, f"the killed tile took {elapsed:.1f} s to come back and finish"
    assert Image.open(io.BytesIO(data)).tobytes() == pillow(image, "gaussian_blur:radius=2").tobytes()
    # the pool replaced its child and still serves the next job
    assert wait_for(lambda: len(worker.child_pids()) == 2, timeout=30)
    again = client.process_image(image, ["invert"])
    assert again.size == image.size


def test_a_task_that_raises_fails_the_job_fast_naming_tile_and_cause(
    client: Client, redis_client: redis.Redis, no_leftovers: None
) -> None:
    image = photo(90, 30, seed=1)
    # Tiles of a 3x1 grid are 30 px wide; every one raises.
    with pytest.raises(tilechord.JobFailed) as caught:
        client.process(encoded(image, "PNG"), ["test_explode:below=1000"], grid=(3, 1), timeout=60)
    message = str(caught.value)
    assert "tile" in message and "/3" in message
    assert "RuntimeError" in message and "boom on a 30-pixel-wide tile" in message
    # the workers still serve the next job
    assert client.process_image(image, ["invert"]).size == image.size


def test_a_damaged_file_gives_invalid_image_and_leaves_nothing(client: Client, no_leftovers: None) -> None:
    good = encoded(photo(200, 100, seed=2), "PNG")
    truncated = good[: len(good) // 2]
    with pytest.raises(tilechord.InvalidImage):
        client.process(truncated, ["invert"], timeout=60)
    assert client.process_image(photo(10, 10), ["invert"]).size == (10, 10)


def test_a_job_with_no_worker_times_out_cleanly(
    settings: tilechord.Settings, redis_client: redis.Redis
) -> None:
    # A client on another database of the same server: no worker listens there.
    url = settings.redis_url
    assert url is not None
    lonely = Client(settings.with_redis(url.rsplit("/", 1)[0] + "/9"))
    try:
        job = lonely.submit(encoded(photo(20, 20), "PNG"), ["invert"])
        with pytest.raises(tilechord.JobTimeout, match="no worker"):
            job.get(timeout=1.5)
        other = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/9")
        assert list(other.scan_iter(match="tilechord:*")) == []
        other.flushdb()
    finally:
        lonely.close()


# -- a Redis restarted in the middle of a job ------------------------------------------------------


@pytest.fixture
def private_cluster() -> Iterator[tuple[EmbeddedRedis, WorkerPool, Client]]:
    """A Redis, two worker processes and a client of this test's own: restarting them harms no other."""
    with own_cluster(1, concurrency=2, loglevel="INFO", key_ttl=900, job_timeout=60, workers=2) as parts:
        server, pools, own = parts
        yield server, pools[0], own


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_redis_restarted_mid_job_fails_the_job_clearly_and_the_same_workers_serve_the_next(
    private_cluster: tuple[EmbeddedRedis, WorkerPool, Client],
) -> None:
    server, pool, own = private_cluster
    image = photo(200, 100, seed=5)
    job = own.submit(encoded(image, "PNG"), ["test_slow:seconds=4", "invert"], grid=(2, 1))
    keys = JobKeys(job.id)
    edits = [AsyncResult(keys.task_id("edit", i), app=own.app) for i in range(2)]
    assert wait_for(lambda: any(r.state == "STARTED" for r in edits), timeout=30), "no tile started"
    worker_pid = pool.pid

    server.restart()  # same port and password, every key gone
    started = time.monotonic()
    try:
        data = job.get(timeout=50)
    except (tilechord.JobFailed, tilechord.JobTimeout, tilechord.BrokerUnavailable) as exc:
        # Redis lost the job's data: a clear error, and soon, not at the end of the timeout
        assert time.monotonic() - started < 20, exc
        assert "lost its data" in str(exc) or isinstance(exc, tilechord.BrokerUnavailable), exc
    else:
        assert Image.open(io.BytesIO(data)).tobytes() == pillow(image, "invert").tobytes()

    # the same worker process reconnects and serves the next job (its pool children may have
    # been replaced: Celery terminates late-acked tasks whose broker connection was lost)
    after = time.monotonic()
    result = own.process_image(image, ["invert"], grid=(2, 1), timeout=90)
    assert result.tobytes() == pillow(image, "invert").tobytes()
    assert time.monotonic() - after < 60  # within the minute (a bound below the get's own timeout)
    assert pool.running and pool.pid == worker_pid
    assert wait_for(lambda: len(pool.child_pids()) == 2, timeout=30)  # children replaced, if killed
    # the tiles running at the restart were cancelled, or finished and found their job gone:
    # once the worker is idle (it answered, with nothing active), nothing of tilechord's is left
    inspect = own.app.control.inspect(destination=[pool.nodename], timeout=2)

    def idle() -> bool:
        active = inspect.active()
        return active is not None and not any(active.values())

    assert wait_for(idle, timeout=30)
    r = redis.Redis.from_url(server.url)
    try:
        assert list(r.scan_iter(match="tilechord:*")) == []
    finally:
        r.close()


# -- every wait has a timeout; a timed-out job cleans up ---------------------------------------------


@pytest.mark.slow
def test_a_timed_out_get_deletes_the_jobs_keys_and_stragglers_leave_none(
    client: Client, redis_client: redis.Redis, no_leftovers: None
) -> None:
    image = photo(200, 100, seed=6)
    job = client.submit(encoded(image, "PNG"), ["test_slow:seconds=2"], grid=(2, 1))
    keys = JobKeys(job.id)
    edits = [AsyncResult(keys.task_id("edit", i), app=client.app) for i in range(2)]
    # Both edits running: a job given up on before its chord went out would leave them PENDING.
    assert wait_for(lambda: all(r.state == "STARTED" for r in edits), timeout=30), [r.state for r in edits]
    started = time.monotonic()
    with pytest.raises(tilechord.JobTimeout, match=r"did not finish within 0\.5 s"):
        job.get(timeout=0.5)
    assert time.monotonic() - started < 5
    assert list(redis_client.scan_iter(match=f"tilechord:{job.id}:*")) == []
    with pytest.raises(tilechord.JobTimeout):  # the error sticks; the data stays gone
        job.get(timeout=10)
    # the tiles still running are stopped (a timed-out job revokes its tasks, terminating
    # the running ones), or finish, find the job gone, and take their writes back
    ended = ("FAILURE", "SUCCESS", "REVOKED")
    assert wait_for(lambda: all(r.state in ended for r in edits), timeout=30), [r.state for r in edits]
    time.sleep(0.5)
    assert list(redis_client.scan_iter(match=f"tilechord:{job.id}:*")) == []


def test_the_command_line_has_a_default_timeout_and_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tilechord", "run", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--timeout" in text
    assert re.search(r"default:? 600", text), text
    assert tilechord.Settings.from_env({}).job_timeout == 600


def test_a_job_waits_no_longer_than_the_configured_job_timeout(settings: tilechord.Settings) -> None:
    url = settings.redis_url
    assert url is not None
    # no worker listens on database 10: only the timeout can end the wait
    lonely = Client(dataclasses.replace(settings.with_redis(url.rsplit("/", 1)[0] + "/10"), job_timeout=1.0))
    try:
        job = lonely.submit(encoded(photo(20, 20), "PNG"), ["invert"])
        started = time.monotonic()
        with pytest.raises(tilechord.JobTimeout, match="within 1 s"):
            job.get()
        assert time.monotonic() - started < 10
        other = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/10")
        assert list(other.scan_iter(match="tilechord:*")) == []
        other.flushdb()
        other.close()
    finally:
        lonely.close()


# -- keys expire even if every process dies ----------------------------------------------------------


def _ttl_within(r: redis.Redis, key: bytes, longest: int) -> bool:
    """Whether *key* expires within *longest* s, or has gone since it was listed (TTL -2)."""
    ttl = r.ttl(key)
    return ttl == -2 or 0 < ttl <= longest


@pytest.mark.slow
def test_every_key_of_a_running_job_and_celerys_results_carry_a_ttl(
    client: Client, settings: tilechord.Settings, redis_client: redis.Redis, no_leftovers: None
) -> None:
    # The client writes with its key_ttl (900 here), the session workers with theirs (the
    # default, 3600, from their environment): every key must carry one or the other.
    longest = max(settings.key_ttl, Settings.from_env({}).key_ttl)
    image = photo(300, 100, seed=7)
    job = client.submit(encoded(image, "PNG"), ["test_slow:seconds=4"], grid=(3, 1))
    keys = JobKeys(job.id)
    edits = [AsyncResult(keys.task_id("edit", i), app=client.app) for i in range(3)]
    try:
        assert wait_for(lambda: any(r.state == "STARTED" for r in edits), timeout=30)
        ours = list(redis_client.scan_iter(match=f"tilechord:{job.id}:*", count=1000))
        assert {keys.live, keys.index, keys.source, keys.tile(0), keys.tile(2)} <= {k.decode() for k in ours}
        # A key may go while it is looked at (an edit drops its tile when done): -2, not -1.
        for key in ours:
            assert _ttl_within(redis_client, key, longest), key
        celery_keys = [
            k
            for k in redis_client.scan_iter(match=f"*{job.id}*", count=1000)
            if not k.startswith(b"tilechord:")
        ]
        assert celery_keys, "expected Celery's records of the running tasks"
        # Everything else too (chord state included), but the broker's own shared structures:
        # the queue, kombu's bindings and its unacked index, which hold no job's data.
        broker = {b"tilechord", b"unacked", b"unacked_index"}
        others = [
            k
            for k in redis_client.scan_iter(count=1000)
            if k not in broker and not k.startswith((b"_kombu.", b"tilechord-test:"))
        ]
        assert any(k.startswith(b"celery-taskset-meta-") for k in others), others
        assert [k for k in others if redis_client.ttl(k) == -1] == []  # -1: no TTL (-2: gone since)
        for key in celery_keys:
            assert _ttl_within(redis_client, key, longest), key
    finally:
        data = job.get(timeout=60)
    assert Image.open(io.BytesIO(data)).tobytes() == image.tobytes()
    # after the job: Celery's own records of it (results, chord counters) expire too
    after = list(redis_client.scan_iter(match=f"*{job.id}*"))
    assert after
    assert all(0 < redis_client.ttl(k) <= longest for k in after), [(k, redis_client.ttl(k)) for k in after]


# -- load ----------------------------------------------------------------------------------------------


def large_image(seed: int, width: int = 4000, height: int = 3000) -> Image.Image:
    """A 12-megapixel photo-like image, made in a fraction of a second."""
    rng = random.Random(seed)
    noise = Image.effect_noise((width // 8, height // 8), 40 + seed).resize((width, height))
    gradient = Image.linear_gradient("L").rotate(rng.choice([0, 90, 180, 270])).resize((width, height))
    return Image.merge("RGB", (gradient, noise, Image.radial_gradient("L").resize((width, height))))


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_hundred_small_and_twenty_large_jobs_at_once_are_all_right_and_leave_nothing(
    client: Client, worker: WorkerPool, redis_client: redis.Redis, no_leftovers: None
) -> None:
    baseline = used_memory(redis_client)
    rng = random.Random(2024)
    small = [photo(rng.randint(64, 256), rng.randint(64, 256), seed=i) for i in range(200)]
    small_grids = [(rng.randint(1, 3), rng.randint(1, 3)) for _ in small]
    large = [large_image(seed) for seed in range(5)]  # each sent four times: 20 large jobs
    expected_small = [pillow(im, "gaussian_blur:radius=1").tobytes() for im in small]
    expected_large = [pillow(im, "invert").tobytes() for im in large]
    work: list[list[tuple[str, int]]] = [[] for _ in range(4)]
    for i in range(200):
        work[i % 4].append(("small", i))
    for i in range(20):
        work[i % 4].insert(i // 4 * 13, ("large", i % 5))  # spread among the small ones

    def send(kind: str, i: int) -> tilechord.Job:
        if kind == "small":
            return client.submit(encoded(small[i], "PNG"), ["gaussian_blur:radius=1"], grid=small_grids[i])
        return client.submit(raw.pack_raw(large[i]), ["invert"], grid=(2, 1))

    def run(share: list[tuple[str, int]]) -> list[str]:
        """Submit every job of this thread's share at once, then collect them; return the wrong ones."""
        jobs = [(kind, i, send(kind, i)) for kind, i in share]
        wrong = []
        for kind, i, job in jobs:
            data = job.get(timeout=180)
            if kind == "small":
                got = Image.open(io.BytesIO(data))
                if got.size != small[i].size or got.tobytes() != expected_small[i]:
                    wrong.append(f"small {i}")
            else:
                got, _ = raw.unpack_raw(data)
                if got.size != large[i].size or got.tobytes() != expected_large[i]:
                    wrong.append(f"large {i}")
        return wrong

    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, work))
    assert time.monotonic() - started < 180
    assert [w for ws in results for w in ws] == []
    assert tilechord_keys(redis_client) == []
    # Redis gives the memory back (Celery's small result records remain, within the slack)
    slack = 5 * 1024 * 1024
    assert wait_for(lambda: used_memory(redis_client) <= baseline + slack, timeout=30, interval=0.5), (
        baseline,
        used_memory(redis_client),
    )
    assert len(worker.child_pids()) == 2
