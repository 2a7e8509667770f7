"""A submitted job: wait for it, watch it, cancel it.

The client waits on the job's own Redis list (BLPOP ``tilechord:<job>:done``), where the
merge, or the first failing task, pushes one end message.  Celery's own records are read
only when nothing came for a poll interval, for failures no task could report.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

from celery.result import AsyncResult

from ..config import QUEUE, redact_url
from ..errors import (
    BrokerUnavailable,
    JobCancelled,
    JobTimeout,
    NoWorker,
    TilechordError,
    error_from_name,
)
from ..imaging import Grid
from ..imaging.decode import SourceInfo
from ..ops import Pipeline
from ..worker.keys import JobKeys
from ..worker.resend import Sweeper
from ..worker.stream import assemble, stored_tiles

if TYPE_CHECKING:
    from ..worker.app import TilechordCelery
    from .window import Window

__all__ = ["POLL", "Job", "Prepared", "ProgressCallback", "rerun_notes"]

POLL = 0.5  # seconds between checks of Celery's own state while waiting
#: Seconds a job may sit unstarted before the client asks whether any worker is alive.
START_GRACE = 2.0
#: Seconds between the waiting client's looks for the job's messages lost in delivery.
SWEEP_EVERY = 1.5
#: Seconds a started job may go with no live worker on its queue before it fails with
#: :class:`NoWorker`: time for a restarted worker to come back, far less than the timeout.
ORPHAN_GRACE = 30.0

#: ``on_progress(tiles_done, tiles_total)`` of :meth:`Job.get`
ProgressCallback: TypeAlias = "Callable[[int, int], object]"


@dataclass(frozen=True)
class Prepared:
    """A job checked by :meth:`Client.plan`, not yet sent."""

    data: bytes
    pipeline: Pipeline
    grid: Grid
    info: SourceInfo
    format: str | None
    frames: int
    stream: bool = False  # a TIFF written as its tiles come (tilechord.worker.stream)
    path: Path | None = None  # a big TIFF sent as it is read (then ``data`` is empty)

    @property
    def tiles(self) -> int:
        return self.grid.cols * self.grid.rows * self.frames


def rerun_notes(runs: list[tuple[str, str]], tiles: int) -> str:
    """``"; tile 2/8 (edit-1) lost with w1@a, run again on w2@b"`` per task that ran twice, or ``""``.

    *runs* are ``(task, worker)`` in the order they started (:meth:`Job.runs`); a task
    started more than once lost its first worker (killed, frozen, cut off, or Redis gone).
    """
    hosts: dict[str, list[str]] = {}
    for task, host in runs:
        hosts.setdefault(task, []).append(host)
    notes = []
    for task, seen in hosts.items():
        if len(seen) > 1:
            tile = int(task.rsplit("-", 1)[1]) + 1
            then = ", then on ".join(seen[1:])
            notes.append(f"; tile {tile}/{tiles} ({task}) lost with {seen[0]}, run again on {then}")
    return "".join(notes)


class Job:
    """A submitted job.  :meth:`get` waits for it, returns the result and frees its data."""

    def __init__(
        self,
        app: TilechordCelery,
        keys: JobKeys,
        tiles: int,
        fmt: str | None,
        timeout: float,
        stages: int = 0,
        window: Window | None = None,
    ) -> None:
        self._app = app
        self._window = window  # a windowed job's feeder and drain (tilechord.client.window)
        self.keys = keys
        self.tiles = tiles
        self.stages = stages  # global steps: each adds a stats and a reduce stage
        self.sent = time.monotonic()
        self.format = fmt
        self.timeout = timeout
        self._deadline = self.sent + timeout  # of the caller's wait (``get(timeout=)``), once it waits
        self._result: bytes | None = None
        self._error: TilechordError | None = None
        self._alone_since: float | None = None  # when the registry was last seen empty, if it is
        self._sweeper = Sweeper(app, keys)
        self._swept = time.monotonic()

    def __repr__(self) -> str:
        return f"<tilechord.Job {self.id} {self.status}>"

    @property
    def id(self) -> str:
        return self.keys.job_id

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
        merge = str(AsyncResult(self.keys.task_id("merge"), app=self._app).state)
        return "STARTED" if merge == "PENDING" else merge  # the tiles are being edited

    def _async_result(self) -> AsyncResult:
        """The Celery task that started the job: its split (task id = job id)."""
        return AsyncResult(self.id, app=self._app)

    def progress(self) -> tuple[int, int]:
        """``(tiles edited, tiles in all)``."""
        if self._result is not None:
            return (self.tiles, self.tiles)
        return (min(self.tiles, self._app.store.tiles_done(self.keys)), self.tiles)

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
        message = self._wait(timeout, on_progress)
        try:
            streamed = self.assembled(message)  # a streamed TIFF: written from its tiles, here
            # The result and the cleanup in two round trips (a small job's budget is tight).
            (data,) = self._app.store.collect([(self.keys, streamed is None and bool(message.get("ok")))])
        except TilechordError as exc:
            self._error = exc
            self._cleanup()
            raise
        except BaseException:
            self._cleanup()
            raise
        finally:
            if self._window is not None:
                self._window.close()
        return self.settle(message, data if streamed is None else streamed)

    def assembled(self, message: dict[str, Any]) -> bytes | None:
        """A streamed job's TIFF written from its tiles into memory; ``None`` for any other end.

        What :meth:`get` returns for such a job (:meth:`save` writes it to a file instead).
        """
        if not (message.get("ok") and message.get("stream")):
            return None
        buffer = io.BytesIO()
        try:
            assemble(message["stream"], buffer, self._edited_tiles())
        finally:
            if self._window is not None:
                self._window.close()
        return buffer.getvalue()

    def _edited_tiles(self) -> Callable[[int], Callable[[int, int], bytes]]:
        """Where a streamed job's edited tiles are read from: Redis, or a windowed job's spool."""
        if self._window is None:
            return stored_tiles(self._app.store, self.keys)
        # The end message has come: the drain has at most a few tiles to go, within the
        # caller's own deadline (a few seconds' grace if that has all but passed).
        self._window.finish(max(5.0, self._deadline - time.monotonic()))
        return self._window.reader

    def save(
        self, file: BinaryIO, timeout: float | None = None, *, on_progress: ProgressCallback | None = None
    ) -> int:
        """:meth:`get`, writing the result into *file* as it is read: its bytes are never held.

        For a big result (a streamed TIFF of gigapixels, in 64 MB chunks in Redis); returns
        how many bytes were written.  The job's data is deleted from Redis in every case.
        """
        if self._result is not None:
            return file.write(self._result)
        if self._error is not None:
            raise self._error
        message = self._wait(timeout, on_progress)
        written = 0
        try:
            if not message.get("ok"):
                self.settle(message)  # raises the job's error
            elif message.get("stream"):  # a streamed TIFF: written from its tiles, row by row
                written = assemble(message["stream"], file, self._edited_tiles())
            else:
                for part in self._app.store.stream(self.keys, self.keys.result):
                    written += file.write(part)
        except TilechordError as exc:
            self._error = exc
            raise
        finally:
            self._cleanup()
        return written

    def _wait(self, timeout: float | None, on_progress: ProgressCallback | None) -> dict[str, Any]:
        """Block until the job's end message (or raise its timeout, abandoning the job)."""
        limit = self.timeout if timeout is None else timeout
        deadline = self._deadline = time.monotonic() + limit
        store = self._app.store
        seen = -1
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.timeout_error(limit)
                message = store.wait(self.keys, min(POLL, remaining))
                if self._window is not None:
                    self._window.check()  # what stopped its sending or draining
                if message is None:
                    message = self.poll_failure()
                if on_progress is not None:
                    done = self.tiles if message is not None and message.get("ok") else self.progress()[0]
                    if done != seen:
                        seen = done
                        on_progress(done, self.tiles)
                if message is not None:
                    return message
        except TilechordError as exc:
            self._error = exc
            # Redis unreachable: a revoke could not be sent either, and kombu would spend
            # seconds retrying it before the caller hears of the outage.
            self._abandon(revoke=not isinstance(exc, BrokerUnavailable))
            raise
        except BaseException:  # Ctrl-C, a cancelled thread: nobody wants the rest of the work
            self._abandon()
            raise

    def settle(self, message: dict[str, Any], data: bytes | None = None) -> bytes:
        """Turn the job's end message into its result (*data*, if read already), or its error.

        Also what :meth:`Client.map` calls for the jobs it waits on together.
        """
        try:
            if not message.get("ok"):
                raise error_from_name(message.get("error", "JobFailed"), message.get("message", ""))
            if data is None:
                data = self._app.store.get(self.keys, self.keys.result)
            self._result = data
            return data
        except TilechordError as exc:
            self._error = exc
            raise

    def poll_failure(self) -> dict[str, Any] | None:
        """Celery's own record, for failures the tasks could not report themselves.

        The split's record is the job id's; once it succeeded, the merge's is
        ``<job>-merge``.  A job still unstarted :data:`START_GRACE` seconds after it was
        sent, with no live worker on its queue, raises :class:`NoWorker`: it cannot start,
        and waiting out the timeout would only hide that.
        """
        self._sweep()
        first = self._async_result()
        state = first.state
        if state == "PENDING" and time.monotonic() - self.sent >= START_GRACE:
            live = self._app.store.live_workers(QUEUE)
            if not live:
                raise NoWorker(f"job {self.id} cannot start: {self._no_worker()}")
        elif state != "PENDING":
            self._check_orphaned()
        if state == "FAILURE":
            return self._failure_message(first)
        if state == "SUCCESS":
            merge = AsyncResult(self.keys.task_id("merge"), app=self._app)
            return self._failure_message(merge) if merge.state == "FAILURE" else None
        return None

    def _sweep(self) -> None:
        """Every :data:`SWEEP_EVERY` s, send again the job's messages lost in delivery (:mod:`.resend`)."""
        now = time.monotonic()
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        with self._app.store.redis_errors():
            self._sweeper.sweep()

    def _check_orphaned(self) -> None:
        """Raise :class:`NoWorker` once a started job has had no live worker for ORPHAN_GRACE s."""
        if self._app.store.live_workers(QUEUE):
            self._alone_since = None
            return
        now = time.monotonic()
        if self._alone_since is None:
            self._alone_since = now
        elif now - self._alone_since >= ORPHAN_GRACE:
            done, total = self.progress()
            raise NoWorker(
                f"job {self.id} lost every worker: {self._no_worker_since(now - self._alone_since)}; "
                f"{done}/{total} tiles edited{self._reruns()}"
            )

    def _no_worker_since(self, seconds: float) -> str:
        url = redact_url(self._app.tilechord_settings.redis_url)
        return f"no live worker on queue {QUEUE} at {url} for {seconds:.0f} s"

    def runs(self) -> list[tuple[str, str]]:
        """``(task, worker)`` for every task of the job started so far, re-runs included, in order.

        A tile whose worker was lost (killed, frozen, cut off) appears twice: with the lost
        worker, then with the one that ran it again.
        """
        return [(run["task"], run["host"]) for run in self._app.store.runs(self.keys)]

    def _reruns(self) -> str:
        """What :func:`rerun_notes` says of this job's runs, or ``""`` if Redis cannot tell."""
        try:
            return rerun_notes(self.runs(), self.tiles)
        except TilechordError:
            return ""

    def _resent(self) -> str:
        again = self._sweeper.sent_again
        return f"; lost in delivery and sent again: {', '.join(again)}" if again else ""

    def _no_worker(self) -> str:
        url = redact_url(self._app.tilechord_settings.redis_url)
        return (
            f"no live worker on queue {QUEUE} at {url}; no worker has started it (celery -A tilechord worker)"
        )

    def _failure_message(self, failed: AsyncResult) -> dict[str, Any]:
        message = self._app.store.wait(self.keys, 0.01)  # the task's own report wins
        if message is not None:
            return message
        return {"ok": False, "error": "JobFailed", "message": f"job {self.id} failed: {failed.result!r}"}

    def timeout_error(self, limit: float) -> JobTimeout:
        """The :class:`JobTimeout` to raise after *limit* seconds, saying what was seen."""
        state = self._async_result().state
        live = self._app.store.live_workers(QUEUE)
        if not live:
            hint = f"; {self._no_worker()}"
        elif state == "PENDING":
            hint = f"; no worker has started it yet: the {live} live worker(s) on queue {QUEUE} are busy"
        else:
            hint = f"; {live} live worker(s) on queue {QUEUE}"
        done, total = self.progress()
        return JobTimeout(
            f"job {self.id} did not finish within {limit:g} s "
            f"({done}/{total} tile{'' if total == 1 else 's'} edited){hint}{self._reruns()}{self._resent()}"
        )

    def _cleanup(self) -> None:
        if self._window is not None:
            self._window.close()
        with contextlib.suppress(BrokerUnavailable):  # keys carry a TTL; they expire anyway
            self._app.store.cleanup(self.keys)

    def task_ids(self) -> list[str]:
        """Every task id the job can have (see :mod:`tilechord.worker.canvas`)."""
        per_tile = ["edit", *(f"stats{s}" for s in range(self.stages))]
        ids = [
            self.id,
            self.keys.task_id("merge"),
            *(self.keys.task_id(f"reduce{s}") for s in range(self.stages)),
        ]
        return ids + [self.keys.task_id(kind, i) for kind in per_tile for i in range(self.tiles)]

    def _abandon(self, revoke: bool = True) -> None:
        """Stop the job's tasks, running ones too, and delete its data.

        Celery's revoke with ``terminate`` reaches every worker: a task not started yet is
        dropped when it arrives, and a running one has its pool process killed, which the
        pool replaces at once, so the workers are free for the next job within a second
        instead of finishing tiles nobody waits for.  SIGKILL, not SIGTERM: the pool's
        children handle SIGTERM in Python, which runs only once Pillow's C call returns
        (seconds, for a big median).  Should the process have moved on to another job's
        task in that instant, that task is requeued (``task_reject_on_worker_lost``).
        """
        if revoke:
            with contextlib.suppress(Exception):  # best effort: Redis may be gone; the keys expire anyway
                self._app.control.revoke(self.task_ids(), terminate=True, signal="SIGKILL")
        self._cleanup()

    def cancel(self) -> None:
        """Stop the job: revoke its tasks (stopping those running) and delete its data.

        A later :meth:`get` raises :class:`JobCancelled`.
        """
        self._error = JobCancelled(f"job {self.id} was cancelled")
        self._abandon()

    def fail(self, error: TilechordError) -> None:
        """Record *error* as the job's end (it was found by whoever waited: a timeout ...)."""
        self._error = error
