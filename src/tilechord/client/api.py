"""The public API: :func:`process`, :func:`process_image`, :func:`submit` and :class:`Job`.

Everything a job can get wrong is checked here, before anything is enqueued: the
source (readable, within limits), the pipeline (known operations, valid parameters, a
mode each step accepts), the grid and the output format.  Then the source goes to Redis
and the canvas to the workers.  With no Redis configured, a local cluster (embedded
Redis plus a worker pool) is started on first use and stopped at exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, TypeAlias

import redis
from celery.result import AsyncResult
from PIL import Image

from ..config import Settings, redact_url
from ..errors import (
    BrokerUnavailable,
    ImageTooLarge,
    InvalidGrid,
    InvalidImage,
    JobFailed,
    JobTimeout,
    TilechordError,
    error_from_name,
)
from ..imaging import codec
from ..imaging.geometry import Grid, auto_grid, parse_grid
from ..ops import OpSpec, Pipeline, parse_pipeline
from ..worker.app import TilechordCelery, create_app, load_plugins
from ..worker.keys import JobKeys, new_job_id
from ..worker.store import BlobStore
from ..worker.tasks import JobSpec, split_signature

__all__ = [
    "Client",
    "Job",
    "MapResult",
    "MapProgress",
    "process",
    "process_image",
    "submit",
    "map",
    "read_source",
    "Source",
    "GridSpec",
]

Source: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]"
GridSpec: TypeAlias = "tuple[int, int] | str | Grid | Literal['auto']"

DEFAULT_GRID = (2, 1)
DEFAULT_BATCH = 64  # small images per task in Client.map, at most
BATCH_BYTES = 8 * 1024 * 1024  # and at most this much source data per task
BATCH_RAMP = 8  # images in each worker's first task, so that none waits for a big one to fill
_POLL = 0.5  # seconds between checks of Celery's own state while waiting

#: ``on_progress(tiles_done, tiles_total)`` of :meth:`Job.get`
ProgressCallback: TypeAlias = "Callable[[int, int], object]"


def read_source(source: Source, max_bytes: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise ImageTooLarge(
                    f"{path} is {size:,} bytes, over the limit of {max_bytes:,} (TILECHORD_MAX_BYTES)"
                )
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidImage(f"no such file: {path}") from None
        except IsADirectoryError:
            raise InvalidImage(f"{path} is a directory, not an image file") from None
        except PermissionError:
            raise InvalidImage(f"cannot read {path}: permission denied") from None
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidImage("the file object must be opened in binary mode ('rb')")
        data = bytes(data)
    else:
        raise InvalidImage(f"a source is a path, bytes or a binary file object, not {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the input is over the limit of {max_bytes:,} bytes (TILECHORD_MAX_BYTES)")
    return data


class Job:
    """A submitted job.  :meth:`get` waits for it, returns the result and frees its data."""

    def __init__(
        self,
        client: Client,
        keys: JobKeys,
        tiles: int,
        fmt: str | None,
        timeout: float,
    ) -> None:
        self._client = client
        self._keys = keys
        self.tiles = tiles
        self.format = fmt
        self.timeout = timeout
        self._result: bytes | None = None
        self._error: TilechordError | None = None

    def __repr__(self) -> str:
        return f"<tilechord.Job {self.id} {self.status}>"

    @property
    def id(self) -> str:
        return self._keys.job_id

    @property
    def status(self) -> str:
        """Celery's state of the job: PENDING, STARTED, SUCCESS, FAILURE ..."""
        if self._result is not None:
            return "SUCCESS"
        if self._error is not None:
            return "FAILURE"
        split = self._async_result()
        state = str(split.state)
        if state != "SUCCESS" or (isinstance(split.result, dict) and "bytes" in split.result):
            return state  # not past the split yet, or a one-tile job the split finished
        merge = str(AsyncResult(self._keys.task_id("merge"), app=self._client.app).state)
        return "STARTED" if merge == "PENDING" else merge  # the tiles are being edited

    def _async_result(self) -> AsyncResult:
        """The Celery task that started the job: its split (task id = job id)."""
        return AsyncResult(self.id, app=self._client.app)

    def progress(self) -> tuple[int, int]:
        """``(tiles edited, tiles in all)``."""
        if self._result is not None:
            return (self.tiles, self.tiles)
        return (min(self.tiles, self._client.store.tiles_done(self._keys)), self.tiles)

    def get(self, timeout: float | None = None, *, on_progress: ProgressCallback | None = None) -> bytes:
        """Wait for the result (``timeout`` seconds, default the job's), then clean up.

        ``on_progress(tiles_done, tiles_total)`` is called (in this thread) whenever the
        count of edited tiles changes, and once more at the end.  Raises the job's typed
        error (:class:`InvalidImage`, :class:`JobFailed` ...), or :class:`JobTimeout`; the
        job's data is deleted from Redis in every case.
        """
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        store = self._client.store
        seen = -1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timeout(limit)
                message = store.wait(self._keys, min(_POLL, remaining))
                if message is None:
                    message = self._poll_failure()
                if on_progress is not None:
                    done = self.tiles if message is not None and message.get("ok") else self.progress()[0]
                    if done != seen:
                        seen = done
                        on_progress(done, self.tiles)
                if message is not None:
                    break
        except TilechordError as exc:
            self._error = exc
            self._cleanup()
            raise
        except BaseException:
            self._cleanup()
            raise
        try:
            # The result and the cleanup in two round trips (a small job's budget is tight).
            (data,) = self._client.store.collect([(self._keys, bool(message.get("ok")))])
        except TilechordError as exc:
            self._error = exc
            raise
        return self._settle(message, data)

    def _settle(self, message: dict[str, Any], data: bytes | None = None) -> bytes:
        """Turn the job's end message into its result (*data*, if read already), or its error."""
        try:
            if not message.get("ok"):
                raise error_from_name(message.get("error", "JobFailed"), message.get("message", ""))
            if data is None:
                data = self._client.store.get(self._keys, self._keys.result)
            self._result = data
            return data
        except TilechordError as exc:
            self._error = exc
            raise

    def _poll_failure(self) -> dict[str, Any] | None:
        """Celery's own record, for failures the tasks could not report themselves."""
        failed = self._celery_failure()
        return None if failed is None else self._failure_message(failed)

    def _celery_failure(self) -> AsyncResult | None:
        """The job's task that failed without telling the client (killed too often ...).

        The split's record is the job id's; once it succeeded, the merge's is
        ``<job>-merge``.
        """
        first = self._async_result()
        state = first.state
        if state == "FAILURE":
            return first
        if state == "SUCCESS":
            merge = AsyncResult(self._keys.task_id("merge"), app=self._client.app)
            return merge if merge.state == "FAILURE" else None
        return None

    def _failure_message(self, failed: AsyncResult) -> dict[str, Any]:
        message = self._client.store.wait(self._keys, 0.01)  # the task's own report wins
        if message is not None:
            return message
        return {"ok": False, "error": "JobFailed", "message": f"job {self.id} failed: {failed.result!r}"}

    def _timeout(self, limit: float) -> JobTimeout:
        state = self._async_result().state
        hint = ""
        if state == "PENDING":
            hint = (
                "; no worker has started it: is one running against "
                f"{redact_url(self._client.settings.redis_url)}? (celery -A tilechord worker)"
            )
        done, total = self.progress()
        return JobTimeout(
            f"job {self.id} did not finish within {limit:g} s ({done}/{total} tiles edited){hint}"
        )

    def _cleanup(self) -> None:
        with contextlib.suppress(BrokerUnavailable):  # keys carry a TTL; they expire anyway
            self._client.store.cleanup(self._keys)

    def cancel(self) -> None:
        """Stop waiting, revoke the job and delete its data."""
        self._async_result().revoke()
        self._error = JobTimeout(f"job {self.id} was cancelled")
        self._cleanup()


@dataclass(frozen=True)
class MapResult:
    """One source's outcome in :meth:`Client.map`: its encoded result, or why it failed.

    Failures come back as values, not exceptions, so one bad image never stops a batch.
    """

    index: int  #: the source's position in the sources given
    source: Source  #: the source as given (a path, bytes or a file object)
    data: bytes | None = None  #: the encoded result, when the job succeeded
    error: TilechordError | None = None  #: the typed error, when it failed
    job_id: str | None = None  #: ``None`` when the job failed before it was submitted
    tiles: int = 0  #: tiles the job was cut into
    seconds: float = 0.0  #: from submission to the end of the job

    def __repr__(self) -> str:
        what = f"{len(self.data):,} bytes" if self.data is not None else f"{type(self.error).__name__}"
        return f"<MapResult #{self.index} {what}>"

    @property
    def ok(self) -> bool:
        return self.error is None

    def unwrap(self) -> bytes:
        """The result's bytes, or raise the job's error."""
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data


@dataclass(frozen=True)
class MapProgress:
    """Where a :meth:`Client.map` stands, passed to its ``on_progress`` callback."""

    done: int  #: sources finished, successfully or not
    failed: int  #: of those, how many failed
    total: int | None  #: sources in all, when known (the sources were a sized collection)
    running: int  #: jobs in flight
    tiles_done: int  #: tiles edited, over every job submitted so far
    tiles_total: int  #: tiles of every job submitted so far


MapProgressCallback: TypeAlias = "Callable[[MapProgress], object]"


class _Flight:
    """A job in flight in :meth:`Client.map`."""

    __slots__ = ("index", "job", "source", "started")

    def __init__(self, index: int, source: Source, job: Job) -> None:
        self.index = index
        self.source = source
        self.job = job
        self.started = time.monotonic()

    def outcome(self, data: bytes | None = None, error: TilechordError | None = None) -> MapResult:
        return MapResult(
            self.index,
            self.source,
            data,
            error,
            self.job.id,
            self.job.tiles,
            time.monotonic() - self.started,
        )

    def cancel(self, client: Client) -> None:
        self.job.cancel()


class _Batch:
    """Small images travelling together as one ``tilechord.batch`` task in :meth:`Client.map`.

    One unit in Redis (see :meth:`BlobStore.open_batch`): its images end by the worker's
    reports, a few at a time, each with its result or its own error.
    """

    def __init__(self, keys: JobKeys, items: list[tuple[int, Source]], timeout: float) -> None:
        self.keys = keys
        self.pending: dict[int, tuple[int, Source]] = dict(enumerate(items))  # by place in the batch
        self.timeout = timeout
        self.started = time.monotonic()

    def _outcome(
        self, item: int, data: bytes | None = None, error: TilechordError | None = None
    ) -> MapResult:
        index, source = self.pending.pop(item)
        job_id = f"{self.keys.job_id}-{item + 1}"  # the batch's task id, and the image's place in it
        return MapResult(index, source, data, error, job_id, 1, time.monotonic() - self.started)

    def settle(
        self, client: Client, messages: list[dict[str, Any]], idle: bool, now: float
    ) -> list[MapResult]:
        """The outcomes that *messages* bring, and of a batch past its timeout; when *idle*
        (nothing came on any list for a poll interval), look for a silent end too."""
        store = client.store
        messages = messages + self._silent_end(client, now, idle)
        ends: dict[int, dict[str, Any]] = {}
        for message in messages:
            for end in message.get("items", []):
                if int(end["item"]) in self.pending:  # a re-delivered batch reports again: once is enough
                    ends.setdefault(int(end["item"]), end)
        ok = [item for item, end in ends.items() if end.get("ok")]
        last = len(ends) == len(self.pending)
        results = store.batch_results(self.keys, ok, last) if ok or last else []
        data = dict(zip(ok, results, strict=True))
        out: list[MapResult] = []
        for item, end in ends.items():
            if not end.get("ok"):
                error = error_from_name(end.get("error", "JobFailed"), end.get("message", ""))
                out.append(self._outcome(item, error=error))
            elif data.get(item) is None:
                gone = (
                    f"image {item + 1} of batch {self.keys.job_id}: its result is gone (expired or deleted)"
                )
                out.append(self._outcome(item, error=JobFailed(gone)))
            else:
                out.append(self._outcome(item, data=data[item]))
        return out

    def _silent_end(self, client: Client, now: float, idle: bool) -> list[dict[str, Any]]:
        """End messages for images whose batch can no longer report them."""
        reason: TilechordError | None = None
        if now - self.started > self.timeout:
            reason = JobTimeout(f"batch {self.keys.job_id} did not finish within {self.timeout:g} s")
        elif idle:  # Celery's record costs a round trip: only when nothing else is coming
            task = AsyncResult(self.keys.job_id, app=client.app)
            state = task.state
            if state in ("SUCCESS", "FAILURE"):
                late = client.store.drain(self.keys)  # reports that came after the wait
                if late:
                    return late
                reason = JobFailed(
                    f"batch {self.keys.job_id} failed: {task.result!r}" if state == "FAILURE"
                    else f"batch {self.keys.job_id} ended without reporting these images"
                )  # fmt: skip
            elif not client.store.is_live(self.keys):
                reason = JobFailed(f"batch {self.keys.job_id} lost its data in Redis (restarted, flushed or "
                                   "expired): submit it again")  # fmt: skip
        if reason is None:
            return []
        name, text = type(reason).__name__, str(reason)
        return [{"items": [{"item": i, "ok": False, "error": name, "message": text} for i in self.pending]}]

    def cancel(self, client: Client) -> None:
        AsyncResult(self.keys.job_id, app=client.app).revoke()
        client.store.cleanup(self.keys)


@dataclass(frozen=True)
class _Prepared:
    """A job checked by :meth:`Client.plan`, not yet sent."""

    data: bytes
    pipeline: Pipeline
    grid: Grid
    info: codec.SourceInfo
    format: str | None
    frames: int

    @property
    def tiles(self) -> int:
        return self.grid.cols * self.grid.rows * self.frames


class Client:
    """Submits jobs with one set of :class:`Settings`.

    The module-level functions use a shared client configured from the environment; make
    your own to point at another Redis or change limits without touching the environment.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._requested = Settings.from_env() if settings is None else settings
        load_plugins(self._requested.plugins)
        self._lock = threading.Lock()
        self._app: TilechordCelery | None = None

    def _connect(self) -> TilechordCelery:
        with self._lock:
            if self._app is None:
                settings = self._requested
                if settings.redis_url is None:
                    from ..local import shared_cluster

                    settings = shared_cluster(settings).settings
                app = create_app(settings)
                app.store.ping()
                self._app = app
            return self._app

    @property
    def app(self) -> TilechordCelery:
        return self._connect()

    @property
    def settings(self) -> Settings:
        """The settings in force (with the embedded Redis's URL once one is started)."""
        return self.app.tilechord_settings

    @property
    def store(self) -> BlobStore:
        return self.app.store

    def plan(
        self,
        data: bytes,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None,
        grid: GridSpec,
        format: str | None,
    ) -> tuple[Pipeline, Grid, codec.SourceInfo, str | None]:
        """Validate a job completely without enqueuing anything."""
        return self._plan(data, ops, grid, format)

    def _plan(
        self,
        data: bytes,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None,
        grid: GridSpec,
        format: str | None,
        checked: dict[tuple[str, str | None], str | None] | None = None,
    ) -> tuple[Pipeline, Grid, codec.SourceInfo, str | None]:
        settings = self._requested
        pipeline = parse_pipeline(ops)
        info = codec.inspect_source(data, settings.max_pixels)
        fmt = format if format is not None else info.format
        key = (info.mode, fmt)
        if checked is not None and key in checked:  # a batch: same pipeline, same mode and format
            fmt = checked[key]
        else:
            out_mode = pipeline.check_mode(info.mode)
            if fmt is not None:
                fmt = codec.check_format(fmt, out_mode)
            if checked is not None:
                checked[key] = fmt
        if isinstance(grid, str) and grid.strip().lower() == "auto":
            chosen = auto_grid(info.size[0], info.size[1], max(1, settings.workers))
        else:
            chosen = parse_grid(grid, max_side=settings.max_side)
        used = chosen.clip(*info.size)
        if used.cols * used.rows > settings.max_tiles:
            raise InvalidGrid(
                f"grid {chosen} makes {used.cols * used.rows} tiles, over the limit of "
                f"{settings.max_tiles} (TILECHORD_MAX_TILES)"
            )
        return pipeline, used, info, fmt

    def submit(
        self,
        source: Source,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        format: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Check the job, store the source in Redis and start the canvas; returns at once."""
        data = read_source(source, self._requested.max_bytes)
        return self._submit(data, ops, grid, format, timeout)

    def _submit(
        self,
        data: bytes,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None,
        grid: GridSpec,
        format: str | None,
        timeout: float | None,
    ) -> Job:
        return self._start(self._prepare(data, ops, grid, format), timeout)

    def _prepare(
        self,
        data: bytes,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None,
        grid: GridSpec,
        format: str | None,
        checked: dict[tuple[str, str | None], str | None] | None = None,
    ) -> _Prepared:
        pipeline, used, info, fmt = self._plan(data, ops, grid, format, checked)
        frames = codec.frame_count(info, fmt, self._requested.max_pixels)
        return _Prepared(data, pipeline, used, info, fmt, frames)

    def _start(self, job: _Prepared, timeout: float | None) -> Job:
        app = self.app
        keys = JobKeys(new_job_id())
        spec: JobSpec = {
            "job": keys.job_id,
            "ops": job.pipeline.to_json(),
            "grid": [job.grid.cols, job.grid.rows],
            "format": job.format,
            "frames": job.frames,
        }
        info = job.info
        describe = (
            f"{info.size[0]}x{info.size[1]} {info.format or 'raw'} {info.mode}, "
            f"grid {job.grid}, [{job.pipeline}]"
        )
        app.store.open_jobs([(keys, job.data)])  # live mark and source in one round trip
        try:
            split_signature(app, spec, describe).apply_async()
        except BaseException:
            app.store.cleanup(keys)
            raise
        limit = self._requested.job_timeout if timeout is None else timeout
        return Job(self, keys, job.tiles, job.format, limit)

    def _start_batch(self, items: list[tuple[int, Source, _Prepared]], timeout: float | None) -> _Batch:
        """Small one-tile jobs with one pipeline and format, sent as one ``tilechord.batch`` task."""
        app = self.app
        first = items[0][2]
        keys = JobKeys(new_job_id())
        app.store.open_batch(keys, [prepared.data for _, _, prepared in items])
        try:
            app.tasks["tilechord.batch"].si(keys.job_id, first.pipeline.to_json(), first.format).set(
                task_id=keys.job_id, argsrepr=f"batch of {len(items)} small images [{first.pipeline}]"
            ).apply_async()
        except BaseException:
            app.store.cleanup(keys)
            raise
        limit = self._requested.job_timeout if timeout is None else timeout
        return _Batch(keys, [(index, source) for index, source, _ in items], limit)

    def process(
        self,
        source: Source,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        format: str | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Run a job and return the encoded result (in the input's format by default)."""
        return self.submit(source, ops, grid=grid, format=format, timeout=timeout).get()

    def process_image(
        self,
        image: Image.Image,
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        timeout: float | None = None,
    ) -> Image.Image:
        """Run a job on an in-memory image; pixels travel raw both ways, never encoded."""
        if not isinstance(image, Image.Image):
            raise InvalidImage(f"process_image takes a PIL.Image.Image, not {type(image).__name__}")
        image.load()
        job = self._submit(codec.pack_raw(image), ops, grid, None, timeout)
        result, _ = codec.unpack_raw(job.get())
        return result

    def map(
        self,
        sources: Iterable[Source],
        ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
        *,
        grid: GridSpec = "auto",
        format: str | None = None,
        timeout: float | None = None,
        jobs: int | None = None,
        batch: int = DEFAULT_BATCH,
        on_progress: MapProgressCallback | None = None,
    ) -> Generator[MapResult, None, None]:
        """Run the same pipeline on every source, one job each; yield outcomes as they finish.

        At most *jobs* tasks are in flight at once (default: twice the configured workers),
        so a long batch neither floods Redis with sources nor reads them all into memory:
        a source is read only when its job is submitted.  Small images (one tile each,
        which ``grid="auto"`` gives anything under a megapixel or so) travel up to *batch*
        (and :data:`BATCH_BYTES`) to a task, since a Celery round trip costs more than
        editing one of them; their ``job_id`` is ``<batch task id>-<place in it>``.  Every
        source yields exactly one :class:`MapResult`, in completion order (``index`` gives
        the position); a bad image is a failed result, not an exception.  A malformed
        pipeline or grid raises at once, and a lost broker raises :class:`BrokerUnavailable`.
        ``on_progress`` is called with a :class:`MapProgress` (in this thread) whenever
        something changes.  Closing the iterator early cancels the jobs still in flight.
        """
        workers = max(1, self._requested.workers)
        limit = 2 * workers if jobs is None else jobs
        if limit < 1:
            raise ValueError(f"jobs must be at least 1, not {limit}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        pipeline = parse_pipeline(ops)
        if not (isinstance(grid, str) and grid.strip().lower() == "auto"):
            parse_grid(grid, max_side=self._requested.max_side)
        total = len(sources) if isinstance(sources, Sized) else None
        launched = 0  # batch tasks sent so far

        def batch_size() -> int:
            """Small first tasks, one per worker, so that every worker starts at once; then bigger.

            With the count of sources known, the rest is cut into two tasks per worker: few
            enough that Celery's cost per task stays small, even enough that the workers
            end together.
            """
            if total is None:
                return min(batch, BATCH_RAMP) if launched < workers else batch
            first = max(1, min(batch, BATCH_RAMP, -(-total // (2 * workers))))
            if launched < workers:
                return first
            return min(batch, max(first, -(-(total - workers * first) // (2 * workers))))

        pending = enumerate(sources)
        flying: dict[str, _Flight | _Batch] = {}  # by the key their end messages come on
        waiting: dict[str | None, list[tuple[int, Source, _Prepared]]] = {}  # small jobs, by format
        waiting_bytes: dict[str | None, int] = {}
        checked: dict[tuple[str, str | None], str | None] = {}  # the pipeline's checks, by mode
        done = failed = tiles_finished = tiles_total = 0
        reported: MapProgress | None = None

        def launch(fmt: str | None) -> None:
            nonlocal tiles_total, launched
            launched += 1
            small = waiting.pop(fmt)
            waiting_bytes.pop(fmt, None)
            started = self._start_batch(small, timeout)
            flying[started.keys.done] = started
            tiles_total += len(small)

        def report() -> None:
            nonlocal reported
            if on_progress is None:
                return
            jobs_now = [f.job for f in flying.values() if isinstance(f, _Flight)]
            counts = self.store.tiles_done_many([j._keys for j in jobs_now])
            running = sum(min(j.tiles, n) for j, n in zip(jobs_now, counts, strict=True))
            in_flight = sum(len(f.pending) if isinstance(f, _Batch) else 1 for f in flying.values())
            now = MapProgress(done, failed, total, in_flight, tiles_finished + running, tiles_total)
            if now != reported:
                reported = now
                on_progress(now)

        try:
            exhausted = False
            while True:
                while not exhausted and len(flying) < limit:
                    try:
                        index, source = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    started = time.monotonic()
                    try:
                        data = read_source(source, self._requested.max_bytes)
                        prepared = self._prepare(data, pipeline, grid, format, checked)
                        if prepared.tiles == 1 and batch > 1:
                            fmt = prepared.format
                            waiting.setdefault(fmt, []).append((index, source, prepared))
                            waiting_bytes[fmt] = waiting_bytes.get(fmt, 0) + len(data)
                            if len(waiting[fmt]) >= batch_size() or waiting_bytes[fmt] >= BATCH_BYTES:
                                launch(fmt)
                            continue
                        job = self._start(prepared, timeout)
                    except BrokerUnavailable:
                        raise
                    except TilechordError as exc:
                        done += 1
                        failed += 1
                        report()
                        yield MapResult(index, source, error=exc, seconds=time.monotonic() - started)
                        continue
                    flying[job._keys.done] = _Flight(index, source, job)
                    tiles_total += job.tiles
                for fmt in list(waiting):  # never hold small jobs back while workers wait
                    launch(fmt)
                report()
                if not flying:
                    if exhausted:
                        return
                    continue
                for result in self._finished(flying):
                    done += 1
                    tiles_finished += result.tiles
                    failed += 0 if result.ok else 1
                    report()
                    yield result
        finally:
            for flight in flying.values():
                with contextlib.suppress(Exception):
                    flight.cancel(self)

    def _finished(self, flying: dict[str, _Flight | _Batch]) -> list[MapResult]:
        """Wait up to a poll interval for jobs in *flying* to end; remove and return them.

        End messages come on one list per job or batch (BLPOP over all of them).  Celery's
        records are looked at only when nothing came for a poll interval, and results are
        read and keys deleted in bulk.
        """
        client = self.store.client
        try:
            item = client.blpop(list(flying), timeout=_POLL)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailable(
                f"lost the connection to Redis at {redact_url(self.store.url)}: {exc}"
            ) from None
        messages: dict[str, list[dict[str, Any]]] = {}
        if item is not None:
            key = item[0].decode() if isinstance(item[0], bytes) else str(item[0])
            messages[key] = [json.loads(item[1])]
        outcomes: list[MapResult] = []
        ended: list[tuple[_Flight, dict[str, Any] | TilechordError]] = []
        now = time.monotonic()
        for key, flight in list(flying.items()):
            if isinstance(flight, _Batch):
                outcomes += flight.settle(self, messages.get(key, []), idle=item is None, now=now)
                if not flight.pending:
                    del flying[key]
                continue
            job = flight.job
            message = messages[key][0] if key in messages else None
            try:
                if message is None and now - flight.started > job.timeout:
                    raise job._timeout(job.timeout)
                if message is None and item is None:
                    message = job._poll_failure()
            except BrokerUnavailable:
                raise
            except TilechordError as exc:
                ended.append((flight, exc))
                del flying[key]
                continue
            if message is not None:
                ended.append((flight, message))
                del flying[key]
        wanted = [(f.job._keys, isinstance(m, dict) and bool(m.get("ok"))) for f, m in ended]
        results = self.store.collect(wanted)
        for (flight, end), data in zip(ended, results, strict=True):
            try:
                if isinstance(end, TilechordError):
                    raise end
                outcomes.append(flight.outcome(data=flight.job._settle(end, data)))
            except TilechordError as exc:
                flight.job._error = exc
                outcomes.append(flight.outcome(error=exc))
        return outcomes

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None


_default_client: Client | None = None
_default_lock = threading.Lock()


def _client() -> Client:
    global _default_client
    with _default_lock:
        if _default_client is None:
            _default_client = Client()
        return _default_client


def submit(
    source: Source,
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    format: str | None = None,
    timeout: float | None = None,
) -> Job:
    """Start a job and return its :class:`Job` at once.  See :meth:`Client.submit`."""
    return _client().submit(source, ops, grid=grid, format=format, timeout=timeout)


def process(
    source: Source,
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    format: str | None = None,
    timeout: float | None = None,
) -> bytes:
    """Edit an image file (path, bytes or binary file) on the cluster; returns its bytes.

    >>> data = tilechord.process("photo.jpg", ["grayscale", "gaussian_blur:radius=4"], grid=(2, 1))
    """
    return _client().process(source, ops, grid=grid, format=format, timeout=timeout)


def process_image(
    image: Image.Image,
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = DEFAULT_GRID,
    timeout: float | None = None,
) -> Image.Image:
    """Edit an in-memory PIL image on the cluster; returns a new PIL image."""
    return _client().process_image(image, ops, grid=grid, timeout=timeout)


def map(
    sources: Iterable[Source],
    ops: Iterable[OpSpec] | OpSpec | Pipeline | None = None,
    *,
    grid: GridSpec = "auto",
    format: str | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
    batch: int = DEFAULT_BATCH,
    on_progress: MapProgressCallback | None = None,
) -> Generator[MapResult, None, None]:
    """Edit many images, one job each, a bounded number at a time; yield each as it ends.

    >>> for r in tilechord.map(["a.jpg", "b.png"], ["sharpen"]):
    ...     print(r.source, r.error or len(r.data))

    See :meth:`Client.map`.
    """
    return _client().map(
        sources,
        ops,
        grid=grid,
        format=format,
        timeout=timeout,
        jobs=jobs,
        batch=batch,
        on_progress=on_progress,
    )
