"""Many images on one event loop: the scheduler behind :meth:`AsyncClient.amap`.

At most *jobs* jobs in flight, each its own asyncio task (awaiting, never a thread);
a source is read only when its job is sent, and each yields one :class:`MapResult` as it
ends, in completion order.  Unlike the sync :meth:`Client.map`, small images are not
batched into one task: each source is its own job, which is what a web back end (one
image a request) sends anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator, Sized
from typing import TYPE_CHECKING

from ..errors import BrokerUnavailable, TilechordError
from ..imaging import parse_grid
from ..ops import Pipeline, parse_pipeline
from .batch import MapProgress, MapProgressCallback, MapResult
from .job import POLL
from .sources import Source

if TYPE_CHECKING:
    from .aio import AsyncClient, AsyncJob
    from .client import GridSpec, Ops

__all__ = ["amap"]


def amap(
    client: AsyncClient,
    sources: Iterable[Source] | AsyncIterable[Source],
    ops: Ops,
    grid: GridSpec,
    format: str | None,
    timeout: float | None,
    jobs: int | None,
    on_progress: MapProgressCallback | None,
) -> AsyncGenerator[MapResult, None]:
    """See :meth:`AsyncClient.amap`."""
    return _AsyncMapper(client, sources, grid, format, timeout, on_progress).run(ops, jobs)


class _AsyncMapper:
    """One run of :meth:`AsyncClient.amap`: its tasks in flight, its counts, its progress."""

    def __init__(
        self,
        client: AsyncClient,
        sources: Iterable[Source] | AsyncIterable[Source],
        grid: GridSpec,
        format: str | None,
        timeout: float | None,
        on_progress: MapProgressCallback | None,
    ) -> None:
        self.client, self.grid, self.format, self.timeout = client, grid, format, timeout
        self.on_progress = on_progress
        self.total = len(sources) if isinstance(sources, Sized) else None
        self.sources: AsyncIterator[Source] | Iterator[Source] = (
            aiter(sources) if isinstance(sources, AsyncIterable) else iter(sources)
        )
        self.index = 0
        self.flying: dict[asyncio.Task[MapResult], int] = {}
        self.jobs: dict[int, AsyncJob] = {}  # the jobs sent and not ended, by source index
        self.done = self.failed = self.tiles_finished = self.tiles_total = 0
        self.reported: MapProgress | None = None

    async def run(self, ops: Ops, jobs: int | None) -> AsyncGenerator[MapResult, None]:
        settings = self.client.client.configured
        limit = 2 * max(1, settings.workers) if jobs is None else jobs
        if limit < 1:
            raise ValueError(f"jobs must be at least 1, not {limit}")
        pipeline = parse_pipeline(ops)  # a malformed pipeline or grid raises at once
        if not (isinstance(self.grid, str) and self.grid.strip().lower() == "auto"):
            parse_grid(self.grid, max_side=settings.max_side)
        try:
            exhausted = False
            while True:
                while not exhausted and len(self.flying) < limit:
                    exhausted = not await self._launch(pipeline)
                self._report()
                if not self.flying:
                    return
                ended, _ = await asyncio.wait(
                    self.flying, timeout=None if self.on_progress is None else POLL,
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
                for task in ended:
                    del self.flying[task]
                    result = task.result()  # BrokerUnavailable raises here: the map cannot go on
                    self.done += 1
                    self.failed += 0 if result.ok else 1
                    self.tiles_finished += result.tiles
                    self._report()
                    yield result
        finally:
            await self._cancel_flying()

    async def _launch(self, pipeline: Pipeline) -> bool:
        """Start the next source's task; whether there was one."""
        try:
            if isinstance(self.sources, AsyncIterator):
                source = await anext(self.sources)
            else:
                source = next(self.sources)
        except (StopIteration, StopAsyncIteration):
            return False
        task = asyncio.ensure_future(self._one(self.index, source, pipeline))
        self.flying[task] = self.index
        self.index += 1
        return True

    async def _one(self, index: int, source: Source, pipeline: Pipeline) -> MapResult:
        """One source, end to end; its failure as a value (a lost broker raises)."""
        started = time.monotonic()
        try:
            job = await self.client.asubmit(source, pipeline, grid=self.grid, format=self.format,
                                            timeout=self.timeout)  # fmt: skip
        except BrokerUnavailable:
            raise
        except TilechordError as exc:
            return MapResult(index, source, error=exc, seconds=time.monotonic() - started)
        self.jobs[index] = job
        self.tiles_total += job.tiles
        try:
            data = await job.get()
        except BrokerUnavailable:
            raise
        except TilechordError as exc:
            return MapResult(index, source, None, exc, job.id, job.tiles, time.monotonic() - started)
        finally:
            self.jobs.pop(index, None)
        return MapResult(index, source, data, None, job.id, job.tiles, time.monotonic() - started)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        running = sum(job.progress()[0] for job in self.jobs.values())
        now = MapProgress(self.done, self.failed, self.total, len(self.flying),
                          self.tiles_finished + running, self.tiles_total)  # fmt: skip
        if now != self.reported:
            self.reported = now
            self.on_progress(now)

    async def _cancel_flying(self) -> None:
        """Cancel the tasks still in flight: each cancels its job (revoke, delete its keys)."""
        tasks = list(self.flying)
        self.flying.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
