"""What tests that talk to the session's Redis and workers share: the plugins, the environment, the keys.

The fixtures that start the Redis and the workers stay in ``conftest.py``; these are the
plain helpers that fixtures and test modules both need (a test module never imports
``conftest`` or another test module).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tilechord import Client, Settings
from tilechord.local import EmbeddedRedis, WorkerPool

#: This folder: the test plugin lives here, and test workers import it from here.
SUPPORT = Path(__file__).resolve().parent

#: Plugin modules every test worker and test client loads (see ``tilechord_testplugin``).
PLUGINS = ("tilechord_testplugin",)


def worker_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of a test worker: our Redis, our plugins, importable test support."""
    path = os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "TILECHORD_REDIS_URL": redis_url,
        "TILECHORD_PLUGINS": ",".join(PLUGINS),
        "PYTHONPATH": path,
        **extra,
    }


def tilechord_keys(r: redis.Redis) -> list[bytes]:
    """Every ``tilechord:*`` key in Redis now, sorted."""
    return sorted(r.scan_iter(match="tilechord:*", count=1000))


@contextlib.contextmanager
def own_cluster(
    pools: int, *, concurrency: int = 1, loglevel: str = "WARNING", **settings: Any
) -> Iterator[tuple[EmbeddedRedis, list[WorkerPool], Client]]:
    """A Redis, *pools* worker pools and a client (with *settings*) of one test's own.

    Killing, freezing or restarting them harms no other test.  Afterwards every pool is
    thawed (a test may have frozen it) and killed, then the Redis is stopped.
    """
    server = EmbeddedRedis()
    server.start()
    env = worker_env(server.url)
    started = [
        WorkerPool(server.url, concurrency=concurrency, env=env, loglevel=loglevel) for _ in range(pools)
    ]
    own = Client(Settings(redis_url=server.url, plugins=PLUGINS, **settings))
    try:
        for pool in started:
            pool.start()
        yield server, started, own
    finally:
        own.close()
        for pool in started:
            if pool.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pool.pid, signal.SIGCONT)
            pool.stop(graceful=False)
        server.stop()
