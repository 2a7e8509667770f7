"""The Redis blob store: image bytes move between tasks here, never in messages.

Every write carries a TTL, so a job's data expires even if every process dies.  Keys
with fixed names (source, plan, result ... see :attr:`JobKeys.fixed`) are deleted by
name; a tile's key is recorded in the job's index set, so cleanup is one SMEMBERS and
one DEL whatever the grid.  A write also
checks, in the same MULTI, that the job is still live; if the client has already given
up and cleaned up, the writer takes its write back.  Either the write lands before the
cleanup (which then deletes it) or after (and is undone): nothing is left behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import redis
from redis.exceptions import NoPermissionError

from ..config import redact_url, redis_ssl_options
from ..errors import BrokerUnavailable, JobGone
from .keys import JobKeys

__all__ = ["BlobStore"]


@contextmanager
def _redis_errors(url: str | None) -> Iterator[None]:
    try:
        yield
    except redis.AuthenticationError as exc:  # before ConnectionError, of which it is a subclass
        raise BrokerUnavailable(f"Redis at {redact_url(url)} refused the credentials: {exc}") from None
    except NoPermissionError as exc:
        raise BrokerUnavailable(f"Redis at {redact_url(url)} denied a command to this user: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot reach Redis at {redact_url(url)}: {exc}") from None


class BlobStore:
    def __init__(self, url: str, ttl: int) -> None:
        self.url = url
        self.ttl = ttl
        self._pid = -1
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        # A prefork worker must not share a connection with its parent: one per process.
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=60,
                socket_connect_timeout=10,
                socket_keepalive=True,
                health_check_interval=10,
                retry_on_timeout=False,
                **redis_ssl_options(self.url),
            )
            self._pid = os.getpid()
        return self._client

    def __repr__(self) -> str:
        return f"BlobStore({redact_url(self.url)!r}, ttl={self.ttl})"

    def ping(self) -> None:
        with _redis_errors(self.url):
            self.client.ping()

    # -- job life -------------------------------------------------------------------

    def open_job(self, keys: JobKeys) -> None:
        with _redis_errors(self.url):
            self.client.set(keys.live, b"1", ex=self.ttl)

    def open_jobs(self, sources: list[tuple[JobKeys, bytes]]) -> None:
        """Open several jobs and store their sources in one round trip (a batch of small ones)."""
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=False)
            for keys, data in sources:
                pipe.set(keys.live, b"1", ex=self.ttl)
                pipe.set(keys.source, data, ex=self.ttl)
            pipe.execute()

    def is_live(self, keys: JobKeys) -> bool:
        with _redis_errors(self.url):
            return bool(self.client.exists(keys.live))

    def cleanup(self, keys: JobKeys) -> None:
        """Delete every key of the job.  Safe to call twice, or on a job never opened."""
        with _redis_errors(self.url):
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
        with _redis_errors(self.url):
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
                results.append(next(replies) if want else None)
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
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(keys.live, b"1", ex=self.ttl)
            pipe.hset(keys.sources, mapping=dict(enumerate(sources)))  # type: ignore[arg-type]
            pipe.expire(keys.sources, self.ttl)
            pipe.execute()

    def batch_sources(self, keys: JobKeys) -> dict[int, bytes]:
        """Every source of a batch, by position; :class:`JobGone` if it was cleaned up."""
        with _redis_errors(self.url):
            found = self.client.hgetall(keys.sources)
        if not found:
            raise JobGone(f"batch {keys.job_id} was cancelled or expired; its sources are gone")
        return {int(k): cast(bytes, v) for k, v in found.items()}  # no decode_responses: bytes

    def batch_report(self, keys: JobKeys, results: dict[int, bytes], ended: list[dict[str, Any]]) -> None:
        """Store finished results and tell the client which images ended, in one transaction.

        Like :meth:`finish`, for a live batch only: after a cleanup the write is taken back.
        """
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.live)
            if results:
                pipe.hset(keys.results, mapping=results)  # type: ignore[arg-type]
                pipe.expire(keys.results, self.ttl)
            pipe.rpush(keys.done, json.dumps({"items": ended}))
            pipe.expire(keys.done, self.ttl)
            live = pipe.execute()[0]
            if not live:
                self.client.delete(keys.results, keys.done)
                raise JobGone(f"batch {keys.job_id} was cancelled or expired; dropped its results")

    def drain(self, keys: JobKeys) -> list[dict[str, Any]]:
        """Every end message waiting on the job's list, without blocking."""
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.lrange(keys.done, 0, -1)
            pipe.delete(keys.done)
            items = pipe.execute()[0]
        return [json.loads(item) for item in items]

    def batch_results(self, keys: JobKeys, items: list[int], last: bool) -> list[bytes | None]:
        """Read (and free) results of a batch; with *last*, delete all the batch's keys."""
        with _redis_errors(self.url):
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

    def put(self, keys: JobKeys, key: str, data: bytes) -> None:
        """Store *data* under *key* for a live job; raise :class:`JobGone` otherwise."""
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.live)
            pipe.set(key, data, ex=self.ttl)
            if key not in keys.fixed:  # a tile's key: cleanup finds it in the index
                pipe.sadd(keys.index, key)
                pipe.expire(keys.index, self.ttl)
            live = pipe.execute()[0]
            if not live:
                self.client.delete(key, keys.index)
                raise JobGone(f"job {keys.job_id} was cancelled or expired; dropped {key}")

    def get(self, keys: JobKeys, key: str) -> bytes:
        with _redis_errors(self.url):
            data = self.client.get(key)
        if data is None:
            raise JobGone(f"job {keys.job_id}: {key} is missing (the job expired or was cleaned up)")
        assert isinstance(data, bytes)
        return data

    def get_pixels(self, keys: JobKeys, key: str) -> memoryview:
        """Like :meth:`get`, for a tile's megabytes: read straight into one buffer."""
        with _redis_errors(self.url):
            data = _read_bulk(self.client, key)
        if data is None:
            raise JobGone(f"job {keys.job_id}: {key} is missing (the job expired or was cleaned up)")
        return data

    # -- signalling -----------------------------------------------------------------

    def tile_done(self, keys: JobKeys) -> None:
        """Count an edited tile, for a live job only (a straggler must not leave a counter)."""
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.live)
            pipe.incr(keys.progress)
            pipe.expire(keys.progress, self.ttl)
            live = pipe.execute()[0]
            if not live:
                self.client.delete(keys.progress)

    def tiles_done(self, keys: JobKeys) -> int:
        with _redis_errors(self.url):
            return int(self.client.get(keys.progress) or 0)

    def tiles_done_many(self, jobs: list[JobKeys]) -> list[int]:
        """:meth:`tiles_done` of several jobs in one round trip."""
        if not jobs:
            return []
        with _redis_errors(self.url):
            return [int(v or 0) for v in self.client.mget([keys.progress for keys in jobs])]

    def finish(self, keys: JobKeys, result: bytes, count_tile: bool = False) -> None:
        """Store a live job's result and tell its client, in one transaction.

        :meth:`put`, :meth:`notify` (and with *count_tile*, :meth:`tile_done`) at once: a
        small job does little else, so three round trips would cost more than its edit.
        """
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.live)
            pipe.set(keys.result, result, ex=self.ttl)
            if count_tile:
                pipe.incr(keys.progress)
                pipe.expire(keys.progress, self.ttl)
            pipe.rpush(keys.done, json.dumps({"ok": True}))
            pipe.expire(keys.done, self.ttl)
            live = pipe.execute()[0]
            if not live:
                self.client.delete(keys.result, keys.index, keys.progress, keys.done)
                raise JobGone(f"job {keys.job_id} was cancelled or expired; dropped its result")

    def notify(self, keys: JobKeys, message: dict[str, Any]) -> None:
        """Tell the waiting client the job ended (result ready, or the first error)."""
        with _redis_errors(self.url):
            pipe = self.client.pipeline(transaction=True)
            pipe.exists(keys.live)
            pipe.rpush(keys.done, json.dumps(message))
            pipe.expire(keys.done, self.ttl)
            live = pipe.execute()[0]
            if not live:
                self.client.delete(keys.done)

    def wait(self, keys: JobKeys, timeout: float) -> dict[str, Any] | None:
        """Block up to *timeout* seconds for the job's end message.

        Raises :class:`JobGone` when the job's ``live`` key has vanished: Redis restarted
        or was flushed (or the keys expired), so no task can finish the job any more, and
        waiting out the timeout would only delay the same failure.
        """
        with _redis_errors(self.url):
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


def _read_bulk(client: redis.Redis, key: str) -> memoryview | None:
    """GET *key*, reading the reply off the socket into one preallocated buffer.

    redis-py's pure-Python parser reads a bulk reply 64 KB at a time into a BytesIO and
    copies it three times more; for a 36 MB tile that is about 3x slower than this
    ``recv_into`` (``scripts/bench.py`` shows the data path).  hiredis would read faster
    but makes SET of large values 3.5x slower, so it stays out.  Anything unexpected
    (a reply already buffered, a non-socket transport) falls back to the parser.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    clean = False
    try:
        conn.send_command("GET", key)  # type: ignore[no-untyped-call]
        sock = getattr(conn, "_sock", None)
        buffered = getattr(getattr(conn, "_parser", None), "_buffer", None)
        if sock is None or buffered is None or buffered.unread_bytes():
            reply = conn.read_response()
            clean = True
            return None if reply is None else memoryview(reply)
        try:
            head = bytearray()
            while b"\r\n" not in head:
                chunk = sock.recv(65536)
                if not chunk:
                    raise redis.ConnectionError("Redis closed the connection during a GET")
                head += chunk
            line, _, rest = bytes(head).partition(b"\r\n")
            if line.startswith(b"-"):
                clean = True
                raise redis.ResponseError(line[1:].decode(errors="replace"))
            if line in (b"$-1", b"_"):
                clean = True
                return None
            if not line.startswith(b"$"):
                raise redis.ConnectionError(f"unexpected reply to GET: {line[:32]!r}")
            length = int(line[1:])
            if len(rest) > length + 2:
                raise redis.ConnectionError("more data than the GET reply announced")
            buffer = bytearray(length + 2)
            view = memoryview(buffer)
            view[: len(rest)] = rest
            got = len(rest)
            while got < length + 2:
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise redis.ConnectionError("Redis closed the connection during a GET")
                got += n
        except TimeoutError as exc:  # socket.timeout
            raise redis.TimeoutError(f"timeout reading a GET reply: {exc}") from None
        except OSError as exc:
            raise redis.ConnectionError(f"error reading a GET reply: {exc}") from None
        clean = True
        return view[:length]
    finally:
        if not clean:  # the reply was not read to its end: the connection is out of step
            conn.disconnect()  # type: ignore[no-untyped-call]
        pool.release(conn)
