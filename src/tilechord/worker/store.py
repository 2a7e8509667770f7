"""The Redis blob store: image bytes move between tasks here, never in messages.

A value over 64 MB (``CHUNK_BYTES``) is stored as chunks under keys of its own
(:mod:`tilechord.worker.chunks`): Redis refuses a value over 512 MB, and each chunk is
indexed for cleanup like a tile.

Every write carries a TTL, so a job's data expires even if every process dies.  Keys
with fixed names (:attr:`JobKeys.fixed`) are deleted by name; a tile's key is recorded in
the job's index set, so cleanup is one SMEMBERS and one DEL whatever the grid.  A write
also checks, in the same MULTI, that the job is still live; if the client has already
given up and cleaned up, the writer takes its write back.  Either the write lands before
the cleanup (which then deletes it) or after (and is undone): nothing is left behind.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.exceptions import NoPermissionError
from redis.retry import Retry

from ..config import CONNECT_TIMEOUT, HEALTH_CHECK, SOCKET_TIMEOUT, redact_url, redis_ssl_options
from ..errors import BrokerUnavailable, JobGone, RedisUnreachable
from . import chunks
from .keys import JobKeys
from .liveness import count_live

__all__ = ["RETRIES", "BlobStore", "redis_errors", "retry_policy"]

#: Retries of a command whose connection failed or timed out, with back-off (0.1, 0.2,
#: 0.4, 0.8, 1, 1 s: about 3.5 s in all), before :class:`RedisUnreachable`: a dropped
#: connection or a Redis failover costs a pause, not a job.  Every write is idempotent
#: (SET of a derived key, a set's member, a counter rebuilt from a set), so a command
#: retried after it had in fact run changes nothing.
RETRIES = 6


def retry_policy() -> Retry:
    """redis-py's own retry, as every tilechord connection uses it."""
    return Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES)


# KEYS[1] the finished set, KEYS[2] the progress counter; ARGV[1] the tile, ARGV[2] the TTL.
# The counter is the set's size: a tile edited twice (a re-run after its worker was lost)
# counts once, and readers keep a plain GET / MGET of the counter.
_COUNT_TILE = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], redis.call('SCARD', KEYS[1]), 'EX', ARGV[2])
"""


# KEYS[1] the job's live mark, KEYS[2] its runs; ARGV[1] the entry, ARGV[2] the TTL.
_STARTED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


@contextmanager
def redis_errors(url: str | None, since: float | None = None) -> Iterator[None]:
    """Turn redis-py's errors into tilechord's; *since*: when Redis last answered (``time.time()``)."""
    try:
        yield
    except redis.AuthenticationError as exc:  # before ConnectionError, of which it is a subclass
        raise BrokerUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except NoPermissionError as exc:
        raise BrokerUnavailable(f"Redis at {redact_url(url)} denied a command to this user: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        when = ""
        if since is not None:
            stamp = time.strftime("%H:%M:%S", time.localtime(since))
            when = f" since {stamp} ({time.time() - since:.1f} s, {RETRIES} retries)"
        raise RedisUnreachable(f"Redis at {redact_url(url)} unreachable{when}: {exc}") from None


class BlobStore:
    def __init__(self, url: str, ttl: int) -> None:
        self.url = url
        self.ttl = ttl
        self._pid = -1
        self._client: redis.Redis | None = None
        self.answered = time.time()  # when Redis last answered us, for "unreachable since"

    @property
    def client(self) -> redis.Redis:
        # A prefork worker must not share a connection with its parent: one per process.
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_keepalive=True,
                health_check_interval=HEALTH_CHECK,
                retry=retry_policy(),
                retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                **redis_ssl_options(self.url),
            )
            self._pid = os.getpid()
        return self._client

    def __repr__(self) -> str:
        return f"BlobStore({redact_url(self.url)!r}, ttl={self.ttl})"

    def redis_errors(self) -> Any:
        """:func:`redis_errors` for this store, around a caller's own commands."""
        return self._errors()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """:func:`redis_errors`, remembering when Redis last answered, for the error's "since"."""
        with redis_errors(self.url, self.answered):
            yield
        self.answered = time.time()

    def ping(self) -> None:
        with self._errors():
            self.client.ping()

    def live_workers(self, queue: str) -> int:
        """Workers on *queue* that renewed their registry entry lately (see :mod:`.liveness`)."""
        with self._errors():
            return count_live(self.client, queue)

    # -- job life -------------------------------------------------------------------

    def open_job(self, keys: JobKeys) -> None:
        with self._errors():
            self.client.set(keys.live, b"1", ex=self.ttl)

    def open_jobs(self, sources: list[tuple[JobKeys, bytes]]) -> None:
        """Open several jobs and store their sources in one round trip (a batch of small ones)."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for keys, data in sources:
                pipe.set(keys.live, b"1", ex=self.ttl)
                self._queue_value(pipe, keys, keys.source, data)
            pipe.execute()

    def is_live(self, keys: JobKeys) -> bool:
        with self._errors():
            return bool(self.client.exists(keys.live))

    def cleanup(self, keys: JobKeys) -> None:
        """Delete every key of the job.  Safe to call twice, or on a job never opened."""
        with self._errors():
            self.client.delete(keys.live)
            members = self.client.smembers(keys.index)
            self.client.delete(*keys.fixed, *members)

    def collect(self, jobs: list[tuple[JobKeys, bool]]) -> list[bytes | None]:
        """Read the results of ended jobs (where asked) and delete all their keys.

        What :meth:`get` and :meth:`cleanup` do for one job, for many in two round trips:
        a batch of small images would otherwise spend more time here than in Pillow.
        """
        if not jobs:
            return []
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for keys, want in jobs:
                if want:
                    pipe.get(keys.result)
                pipe.delete(keys.live)
                pipe.smembers(keys.index)
            replies = iter(pipe.execute())
            results: list[bytes | None] = []
            pipe = self.client.pipeline(transaction=False)
            for keys, want in jobs:
                results.append(self._whole(keys, keys.result, next(replies)) if want else None)
                next(replies)
                members = next(replies)
                pipe.delete(*keys.fixed, *members)
            pipe.execute()
        return results

    # -- batches of small images ----------------------------------------------------
    #
    # A batch is one unit in Redis: a live key, a hash of sources, a hash of results and
    # one list of end messages, all under the batch's id.  Per image that is a field, not
    # five keys and their TTLs: at a millisecond of Pillow work per image, the commands
    # to open, finish and delete a job each would cost more than the work.

    def open_batch(self, keys: JobKeys, sources: list[bytes]) -> None:
        """Mark the batch live and store its sources, in one transaction (with their TTLs)."""
        with self._errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.set(keys.live, b"1", ex=self.ttl)
            pipe.hset(keys.sources, mapping=dict(enumerate(sources)))  # type: ignore[arg-type]
            pipe.expire(keys.sources, self.ttl)
            pipe.execute()

    def batch_sources(self, keys: JobKeys) -> dict[int, bytes]:
        """Every source of a batch, by position; :class:`JobGone` if it was cleaned up."""
        with self._errors():
            found = self.client.hgetall(keys.sources)
        if not found:
            raise JobGone(f"batch {keys.job_id} was cancelled or expired; its sources are gone")
        return {int(k): cast(bytes, v) for k, v in found.items()}  # no decode_responses: bytes

    def batch_report(self, keys: JobKeys, results: dict[int, bytes], ended: list[dict[str, Any]]) -> None:
        """Store finished results and tell the client which images ended, in one transaction.

        Like :meth:`finish`, for a live batch only: after a cleanup the write is taken back.
        """

        def write(pipe: Pipeline) -> None:
            if results:
                pipe.hset(keys.results, mapping=results)  # type: ignore[arg-type]
                pipe.expire(keys.results, self.ttl)
            self._push_done(pipe, keys, {"items": ended})

        self._guarded(keys, write, (keys.results, keys.done),
                      f"batch {keys.job_id} was cancelled or expired; dropped its results")  # fmt: skip

    def drain(self, keys: JobKeys) -> list[dict[str, Any]]:
        """Every end message waiting on the job's list, without blocking."""
        with self._errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.lrange(keys.done, 0, -1)
            pipe.delete(keys.done)
            items = pipe.execute()[0]
        return [json.loads(item) for item in items]

    def batch_results(self, keys: JobKeys, items: list[int], last: bool) -> list[bytes | None]:
        """Read (and free) results of a batch; with *last*, delete all the batch's keys."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            if items:
                pipe.hmget(keys.results, items)
            if last:
                pipe.delete(*keys.fixed)
            elif items:
                pipe.hdel(keys.results, *items)
            replies = pipe.execute()
        return list(replies[0]) if items else []

    # -- data -----------------------------------------------------------------------

    def put(self, keys: JobKeys, key: str, data: chunks.Data) -> None:
        """Store *data* under *key* for a live job (as chunks if large); raise :class:`JobGone` otherwise."""
        self._guarded(
            keys,
            lambda pipe: self._queue_value(pipe, keys, key, data),
            (keys.index,),
            f"job {keys.job_id} was cancelled or expired; dropped {key}",
        )

    def put_stream(self, keys: JobKeys, key: str, parts: Iterable[chunks.Data]) -> None:
        """:meth:`put` of a value as it comes (a source file as it is read), holding one chunk.

        Each chunk is one guarded write; the value reads as absent until its last.
        """
        with self._errors():
            chunks.put_stream(self.client, key, parts, self.ttl, self._chunk_guard(keys, key))

    def put_file(self, keys: JobKeys, key: str, file: Any) -> None:
        """:meth:`put_stream` of a binary file, read into one chunk-sized buffer (a big source)."""
        with self._errors():
            chunks.put_file(self.client, key, file, self.ttl, self._chunk_guard(keys, key))

    def _chunk_guard(self, keys: JobKeys, key: str) -> Callable[[Callable[[Pipeline], list[str]]], None]:
        gone = f"job {keys.job_id} was cancelled or expired; dropped {key}"
        return lambda queue: self._guarded(
            keys, lambda pipe: self._indexed(pipe, keys, queue(pipe)), (keys.index,), gone
        )

    def get(self, keys: JobKeys, key: str) -> bytes:
        """A value as bytes: for small ones (a plan, a statistic); a chunked one costs a copy."""
        with self._errors():
            data = self.client.get(key)
            assert data is None or isinstance(data, bytes)
            whole = self._whole(keys, key, data)
        if whole is None:
            raise JobGone(f"job {keys.job_id}: {key} is missing (the job expired or was cleaned up)")
        return whole

    def get_pixels(self, keys: JobKeys, key: str) -> memoryview:
        """Like :meth:`get`, for megabytes: read straight into one buffer, chunk by chunk if chunked."""
        with self._errors():
            data = chunks.get(self.client, key)
        if data is None:
            raise JobGone(f"job {keys.job_id}: {key} is missing (the job expired or was cleaned up)")
        return data

    def reader(self, keys: JobKeys, key: str) -> tuple[Callable[[int, int], bytes], int]:
        """A reader of byte ranges of the value under *key*, and its length: what a region decoder reads."""
        with self._errors():
            layout = chunks.head(self.client, key)
        if layout is None:
            raise JobGone(f"job {keys.job_id}: {key} is missing (the job expired or was cleaned up)")

        def read(offset: int, size: int) -> bytes:
            with self._errors():
                return chunks.read_at(self.client, key, offset, size, layout)

        return read, layout.length

    def stream(self, keys: JobKeys, key: str) -> Iterator[memoryview]:
        """The value under *key* in parts of at most a chunk (to write a big result to a file)."""
        parts = chunks.iter_chunks(self.client, key)
        while True:
            with self._errors():
                part = next(parts, None)
            if part is None:
                return
            yield part

    def _queue_value(self, pipe: Pipeline, keys: JobKeys, key: str, data: chunks.Data) -> list[str]:
        """Queue *data* under *key* (as chunks if large) and index the keys cleanup cannot name."""
        return self._indexed(pipe, keys, chunks.queue_put(pipe, key, data, self.ttl))

    def _indexed(self, pipe: Pipeline, keys: JobKeys, written: list[str]) -> list[str]:
        indexed = [name for name in written if name not in keys.fixed]  # tiles, chunks
        if indexed:
            pipe.sadd(keys.index, *indexed)
            pipe.expire(keys.index, self.ttl)
        return written

    def _whole(self, keys: JobKeys, key: str, data: bytes | None) -> bytes | None:
        """*data* as read by a GET of *key*; the value itself if it is a chunked value's header."""
        if data is None or chunks.header_of(data) is None:
            return data
        value = chunks.get(self.client, key)
        return None if value is None else bytes(value)

    # -- signalling -----------------------------------------------------------------

    def tile_done(self, keys: JobKeys, tile: int) -> None:
        """Count an edited tile, once however often it ran, for a live job only."""
        self._guarded(
            keys, lambda pipe: self._count_tile(pipe, keys, tile), (keys.progress, keys.finished), None
        )

    def started(self, keys: JobKeys, task: str, host: str) -> None:
        """Record that *host* started *task* of a live job; :class:`JobGone` if it is not live.

        Checked and written in one script: a task of a dead job (a straggler of a job that
        failed or was cancelled) writes nothing at all, not even a write it takes back.
        """
        entry = json.dumps({"task": task, "host": host})
        with self._errors():
            live = self.client.eval(_STARTED, 2, keys.live, keys.runs, entry, self.ttl)
        if not live:
            raise JobGone(f"job {keys.job_id} was cancelled or expired; skipped {task}")

    def runs(self, keys: JobKeys) -> list[dict[str, str]]:
        """Every task start of the job so far, in order (see :meth:`started`)."""
        with self._errors():
            items = self.client.lrange(keys.runs, 0, -1)
        return [json.loads(item) for item in items]

    def missing(self, keys: JobKeys, names: list[str]) -> list[str]:
        """Those of *names* not stored (yet); :class:`JobGone` if the job itself is gone."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(keys.live)
            for name in names:
                pipe.exists(name)
            live, *found = pipe.execute()
        if not live:
            raise JobGone(f"job {keys.job_id} was cancelled or expired")
        return [name for name, there in zip(names, found, strict=True) if not there]

    def beat(self, keys: JobKeys, ttl: float) -> None:
        """Mark a live job's client as sending (:attr:`JobKeys.feeder`) for *ttl* seconds."""

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.feeder, b"1", px=int(ttl * 1000))

        self._guarded(keys, write, (keys.feeder,), f"job {keys.job_id} was cancelled or expired")

    def finished_tiles(self, keys: JobKeys) -> set[int]:
        """The tiles edited so far (each once, however often it ran)."""
        return self.watch(keys)[0]

    def watch(self, keys: JobKeys) -> tuple[set[int], bool]:
        """:meth:`finished_tiles`, and whether the job is over (gone, or its end message sent)."""
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            finished, live, ended = pipe.smembers(keys.finished).exists(keys.live).llen(keys.done).execute()  # type: ignore[attr-defined]
        return {int(item) for item in finished}, not live or ended > 0

    def drop(self, keys: JobKeys, *names: str) -> None:
        """Delete values of the job (their chunks too) that are no longer needed."""
        with self._errors():
            doomed = [key for name in names for key in chunks.keys_of(self.client, name)]
            if doomed:
                self.client.delete(*doomed)

    def tiles_done(self, keys: JobKeys) -> int:
        with self._errors():
            return int(self.client.get(keys.progress) or 0)

    def tiles_done_many(self, jobs: list[JobKeys]) -> list[int]:
        """:meth:`tiles_done` of several jobs in one round trip."""
        with self._errors():
            return [int(v or 0) for v in self.client.mget([keys.progress for keys in jobs])] if jobs else []

    def finish(self, keys: JobKeys, result: chunks.Data, count_tile: bool = False) -> None:
        """Store a live job's result and tell its client, in one transaction.

        :meth:`put`, :meth:`notify` (and with *count_tile*, :meth:`tile_done`) at once: a
        small job does little else, so three round trips would cost more than its edit.
        """

        def write(pipe: Pipeline) -> list[str]:
            written = self._queue_value(pipe, keys, keys.result, result)
            if count_tile:
                self._count_tile(pipe, keys, 0)
            self._push_done(pipe, keys, {"ok": True})
            return written

        self._guarded(keys, write, (keys.result, keys.index, keys.progress, keys.finished, keys.done),
                      f"job {keys.job_id} was cancelled or expired; dropped its result")  # fmt: skip

    def notify(self, keys: JobKeys, message: dict[str, Any]) -> None:
        """Tell the waiting client the job ended (result ready, or the first error)."""
        self._guarded(keys, lambda pipe: self._push_done(pipe, keys, message), (keys.done,), None)

    # -- the guarded write ------------------------------------------------------------

    def _guarded(
        self,
        keys: JobKeys,
        write: Callable[[Pipeline], Iterable[str] | None],
        undo: tuple[str, ...],
        gone: str | None,
    ) -> None:
        """Run *write* in one MULTI with a check that the job is live; take it back if not.

        Every write of a task goes through here.  The client's cleanup deletes the live
        mark first, so either a write lands before the cleanup (which deletes it) or
        after, finds the job gone and deletes *undo* itself, with the keys *write* returns
        (a value's chunks, whose names only the write knows): nothing is left behind.
        With *gone*, a write to a dead job raises :class:`JobGone` with that message, so
        the task stops; without, it is dropped quietly (counters, end notices).
        """
        with self._errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.live)
            written = write(pipe) or ()
            live = pipe.execute()[0]
            if not live:
                self.client.delete(*undo, *written)
                if gone is not None:
                    raise JobGone(gone)

    def _push_done(self, pipe: Pipeline, keys: JobKeys, message: dict[str, Any]) -> None:
        pipe.rpush(keys.done, json.dumps(message))
        pipe.expire(keys.done, self.ttl)

    def _count_tile(self, pipe: Pipeline, keys: JobKeys, tile: int) -> None:
        pipe.eval(_COUNT_TILE, 2, keys.finished, keys.progress, tile, self.ttl)

    def wait_any(self, done_keys: list[str], timeout: float) -> tuple[str, dict[str, Any]] | None:
        """Block up to *timeout* seconds for the first end message on any of *done_keys*.

        One BLPOP over every job and batch in flight (:meth:`Client.map`); returns the
        list's key and its message.
        """
        with self._errors():
            item = self.client.blpop(done_keys, timeout=max(0.01, timeout))
        if item is None:
            return None
        key = item[0].decode() if isinstance(item[0], bytes) else str(item[0])
        message: dict[str, Any] = json.loads(item[1])
        return key, message

    def wait(self, keys: JobKeys, timeout: float) -> dict[str, Any] | None:
        """Block up to *timeout* seconds for the job's end message.

        Raises :class:`JobGone` when the job's ``live`` key has vanished: Redis restarted
        or was flushed (or the keys expired), so no task can finish the job any more, and
        waiting out the timeout would only delay the same failure.
        """
        with self._errors():
            # BLPOP's timeout has a resolution of 0.01 s; 0 would mean forever.
            item = self.client.blpop([keys.done], timeout=max(0.01, timeout))
            if item is None and not self.client.exists(keys.live):
                raise JobGone(
                    f"job {keys.job_id} lost its data in Redis (Redis restarted or was flushed, or the "
                    f"job outlived its {self.ttl} s key TTL); it cannot finish: submit it again"
                )
        if item is None:
            return None
        message: dict[str, Any] = json.loads(item[1])
        return message
