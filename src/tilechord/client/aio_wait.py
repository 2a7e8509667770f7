"""The asyncio client's Redis side: one bounded pool, and one BLPOP for every waiting job.

A BLPOP holds its connection until a message comes, so a BLPOP per waiting job would take
a connection per job.  Instead one task per :class:`~tilechord.client.aio.AsyncClient`
(the :class:`Waiter`) BLPOPs the ``done`` lists of every job it watches at once, plus a
wake-up list of its own (so a job watched after the BLPOP was sent does not wait for the
poll interval), and hands each end message to its job's future.  Every :data:`POLL`
seconds a sweep reads, in one round trip per Redis for all the jobs, what the sync
:class:`~tilechord.client.job.Job` reads one job at a time while it waits: tiles done,
whether the job is still live, and Celery's records of its split and merge (for failures
no task could report).  A thousand waiting jobs cost two connections, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff

from ..config import CONNECT_TIMEOUT, HEALTH_CHECK, QUEUE, SOCKET_TIMEOUT, redact_url, redis_ssl_options
from ..errors import BrokerUnavailable, JobGone, NoWorker, TilechordError
from ..worker.keys import JobKeys, new_job_id
from ..worker.store import RETRIES, redis_errors
from .job import POLL, START_GRACE

__all__ = ["POOL_WAIT", "AsyncStore", "Watch", "Waiter"]

POOL_WAIT = 60.0  # seconds a command may wait for a free connection of the pool before it fails


def _pool(url: str, max_connections: int) -> aioredis.Redis:
    """A client on a pool of at most *max_connections*: a caller past the bound waits for one."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT,
        socket_timeout=SOCKET_TIMEOUT,  # above any BLPOP's own timeout (at most POLL)
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_keepalive=True,
        health_check_interval=HEALTH_CHECK,
        retry=AsyncRetry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        **redis_ssl_options(url),
    )
    return aioredis.Redis(connection_pool=pool)


class AsyncStore:
    """What :class:`~tilechord.worker.store.BlobStore` does for a client, on ``redis.asyncio``.

    The same keys, the same order of deletes, the same error mapping
    (:class:`BrokerUnavailable`), on one bounded connection pool.
    """

    def __init__(self, url: str, ttl: int, max_connections: int) -> None:
        self.url = url
        self.ttl = ttl
        self.redis = _pool(url, max_connections)

    async def collect(self, keys: JobKeys, want: bool) -> bytes | None:
        """The job's result (if *want*), and every key of the job deleted: two round trips."""
        with redis_errors(self.url):
            async with self.redis.pipeline(transaction=False) as pipe:
                if want:
                    pipe.get(keys.result)
                pipe.delete(keys.live)
                pipe.smembers(keys.index)
                replies = await pipe.execute()
            members = replies[-1]
            await self.redis.delete(*keys.fixed, *members)
        data = replies[0] if want else None
        assert data is None or isinstance(data, bytes)
        return data

    async def cleanup(self, keys: JobKeys) -> None:
        """Delete every key of the job (the live mark first, as :meth:`BlobStore.cleanup`)."""
        with redis_errors(self.url):
            await self.redis.delete(keys.live)
            members = await self.redis.smembers(keys.index)
            await self.redis.delete(*keys.fixed, *members)

    async def pop_done(self, keys: JobKeys) -> dict[str, Any] | None:
        """The job's end message if one is waiting, without blocking."""
        with redis_errors(self.url):
            item = await self.redis.lpop(keys.done)
        return None if item is None else dict(json.loads(item))  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()


@dataclass
class Watch:
    """One job the waiter watches: its end message comes on *future*."""

    keys: JobKeys
    sent: float  # time.monotonic() when its split was sent
    future: asyncio.Future[dict[str, Any]]
    tiles_done: int = 0  # as of the last sweep
    state: str = "PENDING"  # Celery's state of the split, then STARTED until the merge's ends
    ended: bool = field(default=False)


class Waiter:
    """The one task that waits for every watched job's end message (see the module's docstring).

    *results* is the client on Celery's result backend (the same as the store's unless
    ``TILECHORD_RESULT_URL`` is set), *meta_key* and *decode* the backend's own key name
    and decoder, and *live_workers* counts the workers on the queue (a sync call, run in
    the client's thread pool: at most one per sweep).
    """

    def __init__(
        self,
        store: AsyncStore,
        results: aioredis.Redis,
        meta_key: Callable[[str], bytes],
        decode: Callable[[bytes], dict[str, Any]],
        live_workers: Callable[[], Awaitable[int]],
    ) -> None:
        self.store, self.results = store, results
        self.meta_key, self.decode, self.live_workers = meta_key, decode, live_workers
        self.jobs: dict[str, Watch] = {}  # by their done list's key
        self.wake_key = JobKeys(f"aio-{new_job_id()}").done  # a tilechord:* key: under the same TTL rules
        self._task: asyncio.Task[None] | None = None
        self._blocked = self._woken = self._pushed = False
        self._wakes: set[asyncio.Task[None]] = set()

    def watch(self, keys: JobKeys, sent: float) -> Watch:
        """Start watching a sent job; its end message will come on the returned watch's future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved, even if unawaited
        watch = Watch(keys, sent, future)
        self.jobs[keys.done] = watch
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="tilechord-aio-waiter")
        elif self._blocked and not self._woken:  # its BLPOP was sent without this job's list
            self._woken = self._pushed = True
            wake = loop.create_task(self._wake())
            self._wakes.add(wake)
            wake.add_done_callback(self._wakes.discard)
        return watch

    def unwatch(self, watch: Watch) -> None:
        self.jobs.pop(watch.keys.done, None)

    async def _wake(self) -> None:
        with contextlib.suppress(Exception):  # the sweep comes within POLL anyway
            async with self.store.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(self.wake_key, b"1")
                pipe.expire(self.wake_key, self.store.ttl)
                await pipe.execute()

    async def _run(self) -> None:
        try:
            while True:
                await self._wait_while_watched()
                await self._tidy()
                if not self.jobs:  # no await between this check and the end: watch() starts a new run
                    return
        except Exception as exc:  # Redis gone, or a bug: every waiting job hears of it, none hangs
            error = exc if isinstance(exc, TilechordError) else BrokerUnavailable(
                f"lost the wait on Redis at {redact_url(self.store.url)}: {exc!r}"
            )  # fmt: skip
            for watch in list(self.jobs.values()):
                self._end(watch, error)

    async def _wait_while_watched(self) -> None:
        next_sweep = time.monotonic() + POLL
        while self.jobs:
            # No await between building the key list and raising the flag: a job watched
            # after this line sees the flag and wakes the BLPOP.
            keys = [self.wake_key, *self.jobs]
            self._blocked, self._woken = True, False
            try:
                with redis_errors(self.store.url):
                    timeout = max(0.01, next_sweep - time.monotonic())
                    item = await self.store.redis.blpop(keys, timeout=timeout)  # type: ignore[arg-type]
            finally:
                self._blocked = False
            if item is not None:
                key, message = item
                self._deliver(key.decode() if isinstance(key, bytes) else str(key), json.loads(message))
            if time.monotonic() >= next_sweep:
                await self._sweep()
                next_sweep = time.monotonic() + POLL

    async def _tidy(self) -> None:
        """With nothing left to watch, delete a wake-up that came too late to be popped."""
        if not self._pushed:
            return
        await asyncio.gather(*self._wakes, return_exceptions=True)
        self._pushed = False
        with redis_errors(self.store.url):
            await self.store.redis.delete(self.wake_key)

    def _deliver(self, key: str, message: dict[str, Any]) -> None:
        watch = self.jobs.get(key)
        if watch is not None:  # not the wake-up list, nor a job unwatched since (cancelled)
            self._end(watch, message)

    def _end(self, watch: Watch, end: dict[str, Any] | BaseException) -> None:
        self.jobs.pop(watch.keys.done, None)
        watch.ended = True
        if watch.future.done():
            return
        if isinstance(end, BaseException):
            watch.future.set_exception(end)
        else:
            watch.future.set_result(end)

    async def _sweep(self) -> None:
        """Tiles done, live marks and Celery's records of every watched job, in one round trip each."""
        watches = list(self.jobs.values())
        if not watches:
            return
        store_keys = [key for w in watches for key in (w.keys.live, w.keys.progress)]
        tasks = [task for w in watches for task in (w.keys.job_id, w.keys.task_id("merge"))]
        with redis_errors(self.store.url):
            found = await self.store.redis.mget(store_keys)
            metas = await self.results.mget([self.meta_key(task) for task in tasks])
        unstarted: list[Watch] = []
        now = time.monotonic()
        for n, watch in enumerate(watches):
            if watch.ended:  # ended while the sweep waited for Redis
                continue
            watch.tiles_done = int(found[2 * n + 1] or 0)
            split, merge = (self._meta(raw) for raw in metas[2 * n : 2 * n + 2])
            failed = self._look(watch, split, merge)
            if failed is not None:
                await self._failed(watch, failed)
            elif not found[2 * n]:
                self._end(watch, JobGone(
                    f"job {watch.keys.job_id} lost its data in Redis (Redis restarted or was flushed, or the "
                    f"job outlived its {self.store.ttl} s key TTL); it cannot finish: submit it again"
                ))  # fmt: skip
            elif watch.state == "PENDING" and now - watch.sent >= START_GRACE:
                unstarted.append(watch)
        if unstarted and not await self.live_workers():
            for watch in unstarted:
                self._end(watch, NoWorker(
                    f"job {watch.keys.job_id} cannot start: no live worker on queue {QUEUE} at "
                    f"{redact_url(self.store.url)}; no worker has started it (celery -A tilechord worker)"
                ))  # fmt: skip

    def _meta(self, raw: Any) -> dict[str, Any]:
        return self.decode(raw) if raw else {"status": "PENDING"}

    @staticmethod
    def _look(watch: Watch, split: dict[str, Any], merge: dict[str, Any]) -> dict[str, Any] | None:
        """Note the job's state from its split's and merge's records; the record of a failure, if any."""
        if split["status"] != "SUCCESS":
            watch.state = str(split["status"])
            return split if split["status"] == "FAILURE" else None
        watch.state = "STARTED" if merge["status"] == "PENDING" else str(merge["status"])
        return merge if merge["status"] == "FAILURE" else None

    async def _failed(self, watch: Watch, meta: dict[str, Any]) -> None:
        """A task failed without a word: its own report, if it came after all, wins."""
        message = await self.store.pop_done(watch.keys)
        if message is None:
            text = f"job {watch.keys.job_id} failed: {meta.get('result')!r}"
            message = {"ok": False, "error": "JobFailed", "message": text}
        self._end(watch, message)

    async def aclose(self) -> None:
        """Stop waiting (every watched job hears BrokerUnavailable) and delete the wake-up list."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        for watch in list(self.jobs.values()):
            self._end(watch, BrokerUnavailable("the asyncio client was closed while the job ran"))
        for wake in list(self._wakes):
            with contextlib.suppress(BaseException):
                await wake
        with contextlib.suppress(Exception):
            await self.store.redis.delete(self.wake_key)
