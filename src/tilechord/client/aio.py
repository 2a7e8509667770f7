"""The asyncio face of the client: ``await client.aprocess(...)``, with no thread per waiting job.

An :class:`AsyncClient` wraps a :class:`~tilechord.client.client.Client`: the same
settings, the same checks before anything is enqueued, the same jobs and typed errors.
Waiting is ``redis.asyncio`` on one bounded pool, one BLPOP for all waiting jobs (see
:mod:`tilechord.client.aio_wait`).

Two things still run in a thread, in one small pool shared by every async client
(:data:`THREADS` threads at most): sending a job, because kombu (Celery's transport) has
no asyncio API, and everything that runs with it before the send: reading a path,
checking the image and the pipeline (Pillow's work, too long to hold the loop for), and
on the first job starting the embedded cluster when no Redis is configured (seconds of
process start-up).  Revoking a cancelled job's tasks is a kombu publish too.

Cancellation follows asyncio: when the task awaiting a job is cancelled (a client that
hung up, ``asyncio.timeout``), the job's tasks are revoked with ``terminate`` (SIGKILL,
as :meth:`Job.cancel`) and its keys are deleted before the cancellation goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from PIL import Image

from ..config import QUEUE
from ..errors import BrokerUnavailable, InvalidImage, JobCancelled, JobGone, TilechordError, error_from_name
from ..imaging.raw import pack_raw, unpack_raw
from ..ops import Pipeline, parse_pipeline
from ..worker.keys import JobKeys
from .aio_map import amap
from .aio_wait import AsyncStore, Waiter, Watch, _pool
from .batch import MapProgressCallback, MapResult
from .job import POLL, Job, ProgressCallback
from .sources import Source, read_source

if TYPE_CHECKING:
    from ..worker.app import TilechordCelery
    from .client import Client, GridSpec, Ops

__all__ = ["MAX_CONNECTIONS", "THREADS", "AsyncClient", "AsyncJob", "for_client"]

T = TypeVar("T")

MAX_CONNECTIONS = 16  # Redis connections of one async client's pool, at most
THREADS = 4  # the threads that send jobs (kombu is sync), shared by every async client

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(THREADS, thread_name_prefix="tilechord-aio")
        return _executor


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a sync call in the shared pool (see the module's docstring for which ones)."""
    return await asyncio.wrap_future(_threads().submit(fn, *args))


class AsyncJob:
    """A submitted job, awaited: :meth:`get` returns its result and frees its data."""

    def __init__(self, client: AsyncClient, job: Job, watch: Watch) -> None:
        self._client = client
        self._job = job
        self._watch = watch
        self._result: bytes | None = None
        self._error: TilechordError | None = None

    def __repr__(self) -> str:
        return f"<tilechord.AsyncJob {self.id} {self.status}>"

    @property
    def id(self) -> str:
        return self._job.id

    @property
    def keys(self) -> JobKeys:
        return self._job.keys

    @property
    def tiles(self) -> int:
        return self._job.tiles

    @property
    def format(self) -> str | None:
        return self._job.format

    @property
    def timeout(self) -> float:
        return self._job.timeout

    @property
    def status(self) -> str:
        """PENDING, STARTED, SUCCESS or FAILURE, as of the last look (no I/O here)."""
        if self._result is not None:
            return "SUCCESS"
        if self._error is not None:
            return "FAILURE"
        future = self._watch.future
        if future.done():
            ok = not future.cancelled() and future.exception() is None and future.result().get("ok")
            return "SUCCESS" if ok else "FAILURE"
        return self._watch.state

    def done(self) -> bool:
        """Whether the job has ended (its result or error is in, not necessarily read)."""
        return self._result is not None or self._error is not None or self._watch.future.done()

    def progress(self) -> tuple[int, int]:
        """``(tiles edited, tiles in all)``, as of the last look (refreshed every 0.5 s; no I/O here)."""
        if self.status == "SUCCESS":
            return (self.tiles, self.tiles)
        return (min(self.tiles, self._watch.tiles_done), self.tiles)

    async def get(
        self, timeout: float | None = None, *, on_progress: ProgressCallback | None = None
    ) -> bytes:
        """Wait for the result (``timeout`` seconds, default the job's), then clean up.

        As :meth:`Job.get`: raises the job's typed error or :class:`JobTimeout`, and the
        job's data is deleted from Redis in every case.  Cancelling the awaiting task
        cancels the job: its tasks are revoked (running ones killed) and its keys deleted.
        """
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        limit = self.timeout if timeout is None else timeout
        try:
            message = await self._wait(limit, on_progress)
            whole = await in_thread(self._job.assembled, message)  # a streamed TIFF, from its tiles
            data = await self._client.store.collect(self.keys, whole is None and bool(message.get("ok")))
            data = data if whole is None else whole
        except TilechordError as exc:
            self._error = exc
            await self._abandon()
            raise
        except BaseException:  # cancelled: nobody wants the rest of the work
            await self._client.shielded(self._abandon())
            raise
        return self._settle(message, data)

    async def _wait(self, limit: float, on_progress: ProgressCallback | None) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        future = self._watch.future
        seen = -1
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not future.done():
                raise await in_thread(self._job.timeout_error, limit)
            step = remaining if on_progress is None else min(POLL, remaining)
            await asyncio.wait([future], timeout=max(0.0, step))
            if on_progress is not None:
                done = self.progress()[0]
                if done != seen:
                    seen = done
                    on_progress(done, self.tiles)
            if future.done():
                return future.result()  # the waiter's error, if it had one

    def _settle(self, message: dict[str, Any], data: bytes | None) -> bytes:
        if not message.get("ok"):
            self._error = error_from_name(message.get("error", "JobFailed"), message.get("message", ""))
            raise self._error
        if data is None:
            self._error = JobGone(f"job {self.id}: {self.keys.result} is missing (the job expired or was "
                                  "cleaned up)")  # fmt: skip
            raise self._error
        self._result = data
        return data

    async def _abandon(self) -> None:
        """Stop the job's tasks, running ones too, and delete its data (see :meth:`Job._abandon`)."""
        self._client.waiter.unwatch(self._watch)
        app = self._client.client.app  # connected: the job was sent through it
        ids = self._job.task_ids()
        with contextlib.suppress(Exception):  # best effort: Redis may be gone; the keys expire anyway
            await in_thread(lambda: app.control.revoke(ids, terminate=True, signal="SIGKILL"))
        with contextlib.suppress(BrokerUnavailable):
            await self._client.store.cleanup(self.keys)

    async def cancel(self) -> None:
        """Stop the job: revoke its tasks (stopping those running) and delete its data.

        A later (or a concurrent) :meth:`get` raises :class:`JobCancelled`.
        """
        self._error = JobCancelled(f"job {self.id} was cancelled")
        future = self._watch.future
        if not future.done():
            future.set_exception(self._error)
        await self._abandon()


class AsyncClient:
    """The asyncio face of a :class:`Client`: ``aprocess``, ``aprocess_image``, ``asubmit``, ``amap``.

    Bind it to one event loop (the one of its first call): its Redis connections are that
    loop's.  ``async with AsyncClient(client):`` closes them; :func:`for_client` gives the
    one of the running loop.
    """

    def __init__(self, client: Client, *, max_connections: int = MAX_CONNECTIONS) -> None:
        if max_connections < 2:
            raise ValueError(f"max_connections must be at least 2 (one waits, one works), not "
                             f"{max_connections}")  # fmt: skip
        self.client = client
        self.max_connections = max_connections
        self._store: AsyncStore | None = None
        self._waiter: Waiter | None = None
        self._results: Any = None  # the result backend's client, when it is another Redis
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Future[Any]] = set()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def store(self) -> AsyncStore:
        assert self._store is not None, "connected on the first job"
        return self._store

    @property
    def waiter(self) -> Waiter:
        assert self._waiter is not None, "connected on the first job"
        return self._waiter

    async def _connect(self) -> None:
        if self._waiter is not None:
            return
        async with self._lock:
            if self._waiter is not None:
                return
            app: TilechordCelery = await in_thread(self._app)  # may start the embedded cluster
            settings = app.tilechord_settings
            assert settings.redis_url is not None
            store = AsyncStore(settings.redis_url, settings.key_ttl, self.max_connections)
            results = store.redis
            backend = settings.backend_url
            if backend is not None and backend != settings.redis_url:
                results = self._results = _pool(backend, 4)
            self._store = store
            self._waiter = Waiter(store, results, app.backend.get_key_for_task, app.backend.decode_result,
                                  lambda: in_thread(app.store.live_workers, QUEUE))  # fmt: skip

    def _app(self) -> TilechordCelery:
        app = self.client.app
        app.backend  # noqa: B018  (made here, in the thread: Celery builds it on first use)
        return app

    def shielded(self, work: Any) -> asyncio.Future[Any]:
        """Run *work* to its end even if the awaiting task is cancelled again; :meth:`aclose` waits."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return asyncio.shield(task)

    async def _send(self, send: Callable[[], Job]) -> AsyncJob:
        """Run *send* (the checks, then the kombu publish) in the thread pool; watch the job it sent.

        The checks come first, before any connection, as in :meth:`Client.submit`: a bad
        image is :class:`InvalidImage` even with Redis down.
        """
        sending = asyncio.wrap_future(_threads().submit(send))
        try:
            job = await asyncio.shield(sending)
        except asyncio.CancelledError:  # the thread goes on: cancel the job it sends, once sent
            self.shielded(self._discard(sending))
            raise
        try:
            await self._connect()  # the waiting side, on the first job (its app is connected now)
        except BaseException:
            await asyncio.shield(in_thread(job.cancel))
            raise
        return AsyncJob(self, job, self.waiter.watch(job.keys, time.monotonic()))

    @staticmethod
    async def _discard(sending: asyncio.Future[Job]) -> None:
        """Cancel the job *sending* sends, if it does (as :meth:`Job.cancel`: revoke, delete its keys)."""
        try:
            job = await sending
        except BaseException:
            return
        await in_thread(job.cancel)

    def _submit_checked(
        self, source: Source, pipeline: Pipeline, grid: GridSpec, format: str | None, timeout: float | None
    ) -> Job:
        """In the thread pool: read and check the source, then send it (:meth:`Client.submit`)."""
        client = self.client
        data = read_source(source, client.configured.max_bytes)
        return client.start_prepared(client.prepare(data, pipeline, grid, format, None), timeout)

    def _submit_image(
        self, image: Image.Image, pipeline: Pipeline, grid: GridSpec, timeout: float | None
    ) -> Job:
        """In the thread pool: pack the image's pixels, check and send (:meth:`Client.process_image`)."""
        client = self.client
        image.load()
        return client.start_prepared(client.prepare(pack_raw(image), pipeline, grid, None, None), timeout)

    async def asubmit(
        self,
        source: Source,
        ops: Ops = None,
        *,
        grid: GridSpec = (2, 1),  # DEFAULT_GRID (client.py imports nothing of this module's)
        format: str | None = None,
        timeout: float | None = None,
    ) -> AsyncJob:
        """Check the job, store the source and start the canvas (see :meth:`Client.submit`)."""
        pipeline = parse_pipeline(ops)
        return await self._send(lambda: self._submit_checked(source, pipeline, grid, format, timeout))

    async def aprocess(
        self,
        source: Source,
        ops: Ops = None,
        *,
        grid: GridSpec = (2, 1),
        format: str | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run a job and return the encoded result (see :meth:`Client.process`)."""
        job = await self.asubmit(source, ops, grid=grid, format=format, timeout=timeout)
        return await job.get()

    async def aprocess_image(
        self, image: Image.Image, ops: Ops = None, *, grid: GridSpec = (2, 1), timeout: float | None = None
    ) -> Image.Image:
        """Run a job on an in-memory image; pixels travel raw both ways (see :meth:`Client.process_image`)."""
        if not isinstance(image, Image.Image):
            raise InvalidImage(f"process_image takes a PIL.Image.Image, not {type(image).__name__}")
        pipeline = parse_pipeline(ops)
        job = await self._send(lambda: self._submit_image(image, pipeline, grid, timeout))
        data = await job.get()
        result, _ = await in_thread(unpack_raw, data)
        return result

    def amap(
        self,
        sources: Iterable[Source] | AsyncIterable[Source],
        ops: Ops = None,
        *,
        grid: GridSpec = "auto",
        format: str | None = None,
        timeout: float | None = None,
        jobs: int | None = None,
        on_progress: MapProgressCallback | None = None,
    ) -> AsyncGenerator[MapResult, None]:
        """Edit many images, one job each, at most *jobs* at a time; ``async for`` each as it ends.

        The meaning of :meth:`Client.map` (results in completion order, failures as values,
        ``on_progress`` with a :class:`MapProgress`), without its batching of small images
        into one task: each source is a job of its own.  Close the iterator early (``async
        with contextlib.aclosing(...)``) and the jobs still in flight are cancelled.
        """
        return amap(self, sources, ops, grid, format, timeout, jobs, on_progress)

    async def aclose(self) -> None:
        """Wait for cancelled jobs' cleanups, stop waiting and close this client's connections."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._waiter is not None:
            await self._waiter.aclose()
        if self._store is not None:
            await self._store.aclose()
        if self._results is not None:
            await self._results.aclose()
        self._store = self._waiter = self._results = None


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, AsyncClient]] = (
    weakref.WeakKeyDictionary()
)


def for_client(client: Client) -> AsyncClient:
    """The :class:`AsyncClient` of *client* on the running event loop (made on first use)."""
    table = _per_loop.setdefault(asyncio.get_running_loop(), {})
    found = table.get(id(client))
    if found is None or found.client is not client:
        found = table[id(client)] = AsyncClient(client)
    return found
