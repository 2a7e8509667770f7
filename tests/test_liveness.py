"""No live worker: the client says so in seconds, and the job's messages never run later.

Each test uses a database of the suite's Redis that no session worker listens on, so
"no worker" is real, and starts its own worker there where one is needed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from procs import wait_for
from workers import tilechord_keys, worker_env

from tilechord import Client, JobTimeout, NoWorker, Settings
from tilechord.local import WorkerPool
from tilechord.worker.keys import workers_key


def _db(settings: Settings, db: int) -> Settings:
    url = settings.redis_url
    assert url is not None
    return settings.with_redis(url.rsplit("/", 1)[0] + f"/{db}")


@pytest.fixture
def lonely(settings: Settings) -> Iterator[tuple[Settings, redis.Redis]]:
    """Settings and a raw client for an empty database that no worker serves."""
    chosen = _db(settings, 13)
    assert chosen.redis_url is not None
    raw = redis.Redis.from_url(chosen.redis_url)
    raw.flushdb()
    try:
        yield chosen, raw
    finally:
        raw.flushdb()
        raw.close()


def test_a_running_worker_is_in_the_registry(client: Client) -> None:
    assert client.store.live_workers("tilechord") >= 1


def test_no_live_worker_fails_in_seconds_not_at_the_timeout(lonely: tuple[Settings, redis.Redis]) -> None:
    settings, raw = lonely
    c = Client(dataclasses.replace(settings, job_timeout=120))
    try:
        job = c.submit(encoded(photo(20, 20), "PNG"), ["invert"])
        # NoWorker, not the plain JobTimeout that only the 120 s timeout could raise.
        with pytest.raises(NoWorker, match="no live worker on queue tilechord") as caught:
            job.get()
        assert isinstance(caught.value, JobTimeout)
        assert "***" in str(caught.value) or "@" not in str(caught.value)  # no password in it
        assert tilechord_keys(raw) == []
    finally:
        c.close()


def test_a_job_nobody_waits_for_is_never_run_when_a_worker_appears(
    lonely: tuple[Settings, redis.Redis],
) -> None:
    settings, raw = lonely
    c = Client(dataclasses.replace(settings, job_timeout=1.0))
    try:
        job = c.submit(encoded(photo(20, 20), "PNG"), ["invert"])
        with pytest.raises(JobTimeout):
            job.get()
        (message,) = [json.loads(m) for m in raw.lrange("tilechord", 0, -1)]
        assert message["headers"]["expires"]  # the split carries the job's expiry
        assert settings.redis_url is not None
        pool = WorkerPool(settings.redis_url, concurrency=1, env=worker_env(settings.redis_url))
        pool.start()
        try:
            pool.wait_ready(timeout=60)
            # The worker takes the message and drops it as expired: REVOKED, not run. (Run,
            # the split would find its source gone and end as a failure instead.)
            assert wait_for(lambda: AsyncResult(job.id, app=c.app).state == "REVOKED", timeout=30)
            assert raw.llen("tilechord") == 0
            assert tilechord_keys(raw) == []
        finally:
            pool.stop()
    finally:
        c.close()


def test_a_killed_worker_drops_out_of_the_registry(lonely: tuple[Settings, redis.Redis]) -> None:
    settings, raw = lonely
    assert settings.redis_url is not None
    pool = WorkerPool(settings.redis_url, concurrency=1, env=worker_env(settings.redis_url))
    pool.start()
    c = Client(settings)
    try:
        pool.wait_ready(timeout=60)
        assert wait_for(lambda: c.store.live_workers("tilechord") == 1, timeout=10)
        pool.kill()  # the whole process group, as a machine that dies: no goodbye
        assert wait_for(lambda: c.store.live_workers("tilechord") == 0, timeout=30)
        assert raw.exists(workers_key("tilechord"))  # the key itself stays, with its own TTL
    finally:
        pool.stop()
        c.close()
