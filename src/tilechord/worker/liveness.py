"""Which workers are alive: each worker renews its entry in a registry every few seconds.

A client whose job sits unstarted asks the registry before it waits any longer: with no
live worker on the queue the job cannot start, and saying so in seconds beats a silent
ten-minute timeout.  The registry is a sorted set per queue (:func:`keys.workers_key`),
hostname -> alive-until on Redis's own clock (``TIME``, inside Lua), so the clocks of the
worker and client machines never matter.  A worker that dies stops renewing and drops out
within :data:`ALIVE_FOR` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, ClassVar

import redis
from celery import bootsteps

from .keys import workers_key

__all__ = ["ALIVE_FOR", "RENEW_EVERY", "Liveness", "count_live", "renew"]

logger = logging.getLogger("tilechord")

#: Seconds an entry stays valid without renewal; a worker renews every RENEW_EVERY.
ALIVE_FOR = 10
RENEW_EVERY = 2.0

# KEYS[1] registry; ARGV[1] member, ARGV[2] seconds alive, ARGV[3] 1 to add, 0 to remove
_RENEW = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], 3 * tonumber(ARGV[2]))
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""
_COUNT = """
local now = tonumber(redis.call('TIME')[1])
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""


def renew(client: redis.Redis, queue: str, hostname: str, alive: bool = True) -> None:
    """Mark *hostname* alive on *queue* for :data:`ALIVE_FOR` seconds (or remove it)."""
    client.eval(_RENEW, 1, workers_key(queue), hostname, ALIVE_FOR, "1" if alive else "0")


def count_live(client: redis.Redis, queue: str) -> int:
    """How many workers on *queue* renewed their entry within :data:`ALIVE_FOR` seconds."""
    return int(client.eval(_COUNT, 1, workers_key(queue)))  # type: ignore[arg-type]


class Liveness(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep: a thread of the worker's main process renews its registry entry.

    In the main process, not the pool: a worker whose pool is busy with long tiles is
    alive.  A Redis error only skips a renewal (the next one retries); the worker's own
    connection handling reports Redis outages.
    """

    requires: ClassVar[set[str]] = {"celery.worker.components:Pool"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        client = worker.app.store.client
        hostname = str(worker.hostname)
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(client, queues, hostname), name="tilechord-liveness", daemon=True
        )
        self._thread.start()

    def _run(self, client: redis.Redis, queues: list[str], hostname: str) -> None:
        while True:
            for queue in queues:
                try:
                    renew(client, queue, hostname)
                except redis.RedisError as exc:
                    logger.debug("liveness: cannot renew %s on %s: %s", hostname, queue, exc)
            if self._stop.wait(RENEW_EVERY):
                break
        for queue in queues:
            with contextlib.suppress(redis.RedisError):  # else it expires within ALIVE_FOR seconds
                renew(client, queue, hostname, alive=False)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
