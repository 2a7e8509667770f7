"""Many images, one job each: the scheduler behind :meth:`Client.map`.

At most *jobs* tasks are in flight; a source is read only when its job is submitted, so a
long list costs no memory.  Small images (one tile each) travel several to a
``tilechord.batch`` task, one unit in Redis (see :meth:`BlobStore.open_batch`), since a
Celery round trip costs more than editing one of them.  Every source yields exactly one
:class:`MapResult`, in completion order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterable, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from celery.result import AsyncResult

from ..config import QUEUE, redact_url
from ..errors import BrokerUnavailable, JobFailed, JobTimeout, NoWorker, TilechordError, error_from_name
from ..ops import Pipeline
from ..worker.keys import JobKeys, new_job_id
from ..worker.specs import BATCH
from .job import POLL, START_GRACE, Job, Prepared
from .sources import Source, read_source

if TYPE_CHECKING:
    from ..worker.app import TilechordCelery

__all__ = ["BATCH_BYTES", "BATCH_RAMP", "DEFAULT_BATCH", "MapProgress", "MapResult", "Mapper", "batch_size"]

DEFAULT_BATCH = 64  # small images per task in Client.map, at most
BATCH_BYTES = 8 * 1024 * 1024  # and at most this much source data per task
BATCH_RAMP = 8  # images in each worker's first task, so that none waits for a big one to fill


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
#: ``prepare(data, pipeline, grid, format, checked)``: :meth:`Client.plan` and the frame count
PrepareFn: TypeAlias = "Callable[[bytes, Pipeline, Any, str | None, dict[Any, str | None]], Prepared]"
#: ``start(prepared, timeout)``: store the source, send the split, return the :class:`Job`
StartFn: TypeAlias = "Callable[[Prepared, float | None], Job]"


def batch_size(total: int | None, workers: int, launched: int, batch: int) -> int:
    """How many small images the next batch task takes.

    Small first tasks, one per worker, so that every worker starts at once; then bigger.
    With the count of sources known, the rest is cut into two tasks per worker: few
    enough that Celery's cost per task stays small, even enough that the workers end
    together.  *launched* is the number of batch tasks sent so far.
    """
    if total is None:
        return min(batch, BATCH_RAMP) if launched < workers else batch
    first = max(1, min(batch, BATCH_RAMP, -(-total // (2 * workers))))
    if launched < workers:
        return first
    return min(batch, max(first, -(-(total - workers * first) // (2 * workers))))


class _Flight:
    """A job in flight."""

    __slots__ = ("index", "job", "source", "started")

    def __init__(self, index: int, source: Source, job: Job) -> None:
        self.index = index
        self.source = source
        self.job = job
        self.started = time.monotonic()

    def outcome(self, data: bytes | None = None, error: TilechordError | None = None) -> MapResult:
        seconds = time.monotonic() - self.started
        return MapResult(self.index, self.source, data, error, self.job.id, self.job.tiles, seconds)

    def cancel(self) -> None:
        self.job.cancel()


class _Batch:
    """Small images travelling together as one ``tilechord.batch`` task.

    Its images end by the worker's reports, a few at a time, each with its result or its
    own error.
    """

    def __init__(
        self, app: TilechordCelery, items: list[tuple[int, Source, Prepared]], timeout: float
    ) -> None:
        self.app = app
        self.keys = JobKeys(new_job_id())
        self.pending: dict[int, tuple[int, Source]] = {n: (i, s) for n, (i, s, _) in enumerate(items)}
        self.timeout = timeout
        first = items[0][2]
        app.store.open_batch(self.keys, [prepared.data for _, _, prepared in items])
        try:
            app.tasks[BATCH].si(self.keys.job_id, first.pipeline.to_json(), first.format).set(
                task_id=self.keys.job_id, argsrepr=f"batch of {len(items)} small images [{first.pipeline}]"
            ).apply_async(expires=timeout)  # nobody waits for it after that: never run it
        except BaseException:
            app.store.cleanup(self.keys)
            raise
        self.started = time.monotonic()

    def _outcome(
        self, item: int, data: bytes | None = None, error: TilechordError | None = None
    ) -> MapResult:
        index, source = self.pending.pop(item)
        job_id = f"{self.keys.job_id}-{item + 1}"  # the batch's task id, and the image's place in it
        return MapResult(index, source, data, error, job_id, 1, time.monotonic() - self.started)

    def settle(self, messages: list[dict[str, Any]], idle: bool, now: float) -> list[MapResult]:
        """The outcomes that *messages* bring, and of a batch past its timeout; when *idle*
        (nothing came on any list for a poll interval), look for a silent end too."""
        messages = messages + self._silent_end(now, idle)
        ends: dict[int, dict[str, Any]] = {}
        for message in messages:
            for end in message.get("items", []):
                if int(end["item"]) in self.pending:  # a re-delivered batch reports again: once is enough
                    ends.setdefault(int(end["item"]), end)
        ok = [item for item, end in ends.items() if end.get("ok")]
        last = len(ends) == len(self.pending)
        results = self.app.store.batch_results(self.keys, ok, last) if ok or last else []
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

    def _silent_end(self, now: float, idle: bool) -> list[dict[str, Any]]:
        """End messages for images whose batch can no longer report them."""
        reason: TilechordError | None = None
        if now - self.started > self.timeout:
            self._stop()  # its task would run on, holding a worker, for nobody (as a timed-out job's)
            reason = JobTimeout(f"batch {self.keys.job_id} did not finish within {self.timeout:g} s")
        elif idle:  # Celery's record costs a round trip: only when nothing else is coming
            task = AsyncResult(self.keys.job_id, app=self.app)
            state = task.state
            if state in ("SUCCESS", "FAILURE"):
                late = self.app.store.drain(self.keys)  # reports that came after the wait
                if late:
                    return late
                reason = JobFailed(
                    f"batch {self.keys.job_id} failed: {task.result!r}" if state == "FAILURE"
                    else f"batch {self.keys.job_id} ended without reporting these images"
                )  # fmt: skip
            elif state == "PENDING" and now - self.started >= START_GRACE and not self._workers():
                url = redact_url(self.app.tilechord_settings.redis_url)
                reason = NoWorker(
                    f"batch {self.keys.job_id} cannot start: no live worker on queue {QUEUE} at {url}"
                )
            elif not self.app.store.is_live(self.keys):
                reason = JobFailed(f"batch {self.keys.job_id} lost its data in Redis (restarted, flushed or "
                                   "expired): submit it again")  # fmt: skip
        if reason is None:
            return []
        name, text = type(reason).__name__, str(reason)
        return [{"items": [{"item": i, "ok": False, "error": name, "message": text} for i in self.pending]}]

    def _workers(self) -> int:
        return self.app.store.live_workers(QUEUE)

    def cancel(self) -> None:
        """Stop the batch's task, running or not, and delete its data (as :meth:`Job.cancel`)."""
        self._stop()
        self.app.store.cleanup(self.keys)

    def _stop(self) -> None:
        """Revoke the batch's task: skipped if not started, killed if running."""
        with contextlib.suppress(Exception):
            self.app.control.revoke(self.keys.job_id, terminate=True, signal="SIGKILL")


@dataclass(frozen=True)
class MapOptions:
    """What one :meth:`Client.map` call was asked for, checked."""

    pipeline: Pipeline
    grid: Any  # a GridSpec
    format: str | None
    timeout: float | None  # None: the settings' job timeout
    job_timeout: float
    limit: int  # tasks in flight, at most
    batch: int  # small images per task, at most
    workers: int
    max_bytes: int


class Mapper:
    """One run of :meth:`Client.map`: its jobs in flight, its counts, its progress.

    The client hands it three functions: *app* (its Celery app, connected on first use),
    *prepare* (check a source, enqueue nothing) and *start* (send a checked job);
    everything else is the scheduling here.
    """

    def __init__(
        self,
        app: Callable[[], TilechordCelery],
        prepare: PrepareFn,
        start: StartFn,
        sources: Iterable[Source],
        options: MapOptions,
        on_progress: MapProgressCallback | None,
    ) -> None:
        self._app, self.prepare, self.start, self.options = app, prepare, start, options
        self.on_progress = on_progress
        self.total = len(sources) if isinstance(sources, Sized) else None
        self.pending = enumerate(sources)
        self.flying: dict[str, _Flight | _Batch] = {}  # by the key their end messages come on
        self.waiting: dict[str | None, list[tuple[int, Source, Prepared]]] = {}  # small jobs, by format
        self.waiting_bytes: dict[str | None, int] = {}
        self.checked: dict[Any, str | None] = {}  # the pipeline's checks, by mode and format
        self.launched = 0  # batch tasks sent so far
        self.done = self.failed = self.tiles_finished = self.tiles_total = 0
        self.reported: MapProgress | None = None

    @property
    def app(self) -> TilechordCelery:
        return self._app()

    def run(self) -> Generator[MapResult, None, None]:
        """Yield every source's outcome as it ends; cancel what is in flight when closed early."""
        try:
            exhausted = False
            while True:
                if not exhausted:
                    exhausted = yield from self._fill()
                for fmt in list(self.waiting):  # never hold small jobs back while workers wait
                    self._launch(fmt)
                self._report()
                if not self.flying:
                    if exhausted:
                        return
                    continue
                for result in self._finished():
                    self.done += 1
                    self.tiles_finished += result.tiles
                    self.failed += 0 if result.ok else 1
                    self._report()
                    yield result
        except BrokerUnavailable:
            # Redis is gone: nothing can be revoked or deleted (kombu would spend seconds per
            # job retrying), and the jobs' keys expire by their TTL.
            self.flying.clear()
            raise
        finally:
            for flight in self.flying.values():
                with contextlib.suppress(Exception):
                    flight.cancel()

    def _fill(self) -> Generator[MapResult, None, bool]:
        """Submit sources until *limit* tasks fly; yield those refused.  Whether all are in."""
        while len(self.flying) < self.options.limit:
            try:
                index, source = next(self.pending)
            except StopIteration:
                return True
            refused = self._submit(index, source)
            if refused is not None:
                self.done += 1
                self.failed += 1
                self._report()
                yield refused
        return False

    def _submit(self, index: int, source: Source) -> MapResult | None:
        """Check one source and send it (or hold it for a batch); its result if refused."""
        started = time.monotonic()
        opts = self.options
        try:
            data = read_source(source, opts.max_bytes)
            prepared = self.prepare(data, opts.pipeline, opts.grid, opts.format, self.checked)
            if prepared.tiles == 1 and opts.batch > 1:
                self._hold(index, source, prepared)
                return None
            job = self.start(prepared, opts.timeout)
        except BrokerUnavailable:
            raise
        except TilechordError as exc:
            return MapResult(index, source, error=exc, seconds=time.monotonic() - started)
        self.flying[job.keys.done] = _Flight(index, source, job)
        self.tiles_total += job.tiles
        return None

    def _hold(self, index: int, source: Source, prepared: Prepared) -> None:
        fmt = prepared.format
        self.waiting.setdefault(fmt, []).append((index, source, prepared))
        self.waiting_bytes[fmt] = self.waiting_bytes.get(fmt, 0) + len(prepared.data)
        size = batch_size(self.total, self.options.workers, self.launched, self.options.batch)
        if len(self.waiting[fmt]) >= size or self.waiting_bytes[fmt] >= BATCH_BYTES:
            self._launch(fmt)

    def _launch(self, fmt: str | None) -> None:
        self.launched += 1
        small = self.waiting.pop(fmt)
        self.waiting_bytes.pop(fmt, None)
        timeout = self.options.job_timeout if self.options.timeout is None else self.options.timeout
        started = _Batch(self.app, small, timeout)
        self.flying[started.keys.done] = started
        self.tiles_total += len(small)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        jobs_now = [f.job for f in self.flying.values() if isinstance(f, _Flight)]
        counts = self.app.store.tiles_done_many([j.keys for j in jobs_now])
        running = sum(min(j.tiles, n) for j, n in zip(jobs_now, counts, strict=True))
        in_flight = sum(len(f.pending) if isinstance(f, _Batch) else 1 for f in self.flying.values())
        now = MapProgress(self.done, self.failed, self.total, in_flight,
                          self.tiles_finished + running, self.tiles_total)  # fmt: skip
        if now != self.reported:
            self.reported = now
            self.on_progress(now)

    def _finished(self) -> list[MapResult]:
        """Wait up to a poll interval for jobs in flight to end; remove and return them.

        End messages come on one list per job or batch (one BLPOP over all of them).
        Celery's records are looked at only when nothing came for a poll interval, and
        results are read and keys deleted in bulk.
        """
        item = self.app.store.wait_any(list(self.flying), POLL)
        messages = {} if item is None else {item[0]: [item[1]]}
        outcomes: list[MapResult] = []
        ended: list[tuple[_Flight, dict[str, Any] | TilechordError]] = []
        now = time.monotonic()
        for key, flight in list(self.flying.items()):
            if isinstance(flight, _Batch):
                outcomes += flight.settle(messages.get(key, []), idle=item is None, now=now)
                if not flight.pending:
                    del self.flying[key]
                continue
            end = self._job_end(flight, messages[key][0] if key in messages else None, now, item is None)
            if end is not None:
                ended.append((flight, end))
                del self.flying[key]
        return outcomes + self._settle(ended)

    @staticmethod
    def _job_end(
        flight: _Flight, message: dict[str, Any] | None, now: float, idle: bool
    ) -> dict[str, Any] | TilechordError | None:
        """A job's end: its message, a timeout or a failure Celery recorded; None while it runs."""
        job = flight.job
        try:
            if message is None and now - flight.started > job.timeout:
                raise job.timeout_error(job.timeout)
            if message is None and idle:
                message = job.poll_failure()
        except BrokerUnavailable:
            raise
        except TilechordError as exc:
            return exc
        return message

    def _settle(self, ended: list[tuple[_Flight, dict[str, Any] | TilechordError]]) -> list[MapResult]:
        """Read the results of ended jobs and delete their keys, in two round trips in all."""
        streamed: list[bytes | None] = []
        for flight, end in ended:  # a streamed TIFF is written from its tiles, before they go
            try:
                streamed.append(flight.job.assembled(end) if isinstance(end, dict) else None)
            except TilechordError as exc:
                streamed.append(None)
                ended[len(streamed) - 1] = (flight, exc)
        wanted = [
            (f.job.keys, isinstance(m, dict) and bool(m.get("ok")) and s is None)
            for (f, m), s in zip(ended, streamed, strict=True)
        ]
        results = self.app.store.collect(wanted)
        outcomes: list[MapResult] = []
        for (flight, end), data, whole in zip(ended, results, streamed, strict=True):
            try:
                if isinstance(end, TilechordError):
                    raise end
                outcomes.append(flight.outcome(data=flight.job.settle(end, data if whole is None else whole)))
            except TilechordError as exc:
                flight.job.fail(exc)
                outcomes.append(flight.outcome(error=exc))
        return outcomes
