"""The client: checks a job completely, then stores its source and sends its canvas.

Everything a job can get wrong is checked here, before anything is enqueued: the
source (readable, within limits), the pipeline (known operations, valid parameters, a
mode each step accepts), the grid and the output format.  With no Redis configured, a
local cluster (embedded Redis plus a worker pool) is started on first use.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, AsyncIterable, Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeAlias

from PIL import Image

from ..config import Settings
from ..errors import ImageTooLarge, InvalidGrid, InvalidImage, UnsupportedMode
from ..imaging import Grid, auto_grid, parse_grid
from ..imaging.decode import SourceInfo, count_frames, frame_count, inspect_source, open_file
from ..imaging.encode import check_format, check_frames
from ..imaging.frames import FrameInfo, inspect_frames
from ..imaging.raw import pack_raw, unpack_raw
from ..ops import OpSpec, Pipeline, parse_pipeline
from ..worker.keys import JobKeys, new_job_id
from ..worker.specs import JobSpec
from ..worker.stream import CELL_BYTES, region_layout, stream_grid, streams_output
from .batch import DEFAULT_BATCH, MapOptions, Mapper, MapProgressCallback, MapResult
from .job import Job, Prepared
from .sources import Source, big_tiff, read_source, too_large
from .window import Window, can_window, plan_window

if TYPE_CHECKING:
    from ..worker.app import TilechordCelery
    from ..worker.store import BlobStore
    from .aio import AsyncClient, AsyncJob

__all__ = ["DEFAULT_GRID", "Client", "GridSpec"]

GridSpec: TypeAlias = "tuple[int, int] | str | Grid | Literal['auto']"
Ops: TypeAlias = "Iterable[OpSpec] | OpSpec | Pipeline | None"
#: The pipeline's checks already made in one :meth:`Client.map`, by (mode, format).
Checked: TypeAlias = "dict[Any, str | None]"

DEFAULT_GRID = (2, 1)


def _is_auto(grid: GridSpec) -> bool:
    return isinstance(grid, str) and grid.strip().lower() == "auto"


def _check_frames(pipeline: Pipeline, frames: tuple[FrameInfo, ...], fmt: str, source: str | None) -> str:
    """Every frame's mode through the pipeline, and the frames it makes through the writer.

    The header shows the first frame only; a later one may have another mode (a GIF's
    RGBA frames after a palette one, a TIFF's mode F page) or size.  Each distinct mode
    is checked once, naming the first frame of it, as Pillow would refuse that frame.
    """
    out_modes: dict[str, str] = {}
    made: list[tuple[str, tuple[int, int]]] = []
    for index, frame in enumerate(frames):
        if frame.mode not in out_modes:
            try:
                out_modes[frame.mode] = pipeline.check_mode(frame.mode)
            except UnsupportedMode as exc:
                raise UnsupportedMode(
                    f"frame {index + 1} of {len(frames)} of the {source} image is mode {frame.mode}: {exc}"
                ) from None
        made.append((out_modes[frame.mode], pipeline.output_size(frame.size)))
    return check_frames(fmt, made)


def _by_region(data: bytes) -> bool:
    """Whether the source is a TIFF whose tiles can read their own regions (no whole decode)."""
    return region_layout(lambda offset, size: data[offset : offset + size], len(data)) is not None


class _Planned(NamedTuple):
    """What :meth:`Client._plan` found: the checked job, before anything is sent."""

    pipeline: Pipeline
    grid: Grid
    info: SourceInfo
    format: str | None
    frames: int
    stream: bool


def _check_limit(info: SourceInfo, settings: Settings) -> None:
    """``TILECHORD_MAX_PIXELS``, for a job some process holds whole (not one that streams)."""
    pixels = info.size[0] * info.size[1]
    if pixels <= settings.max_pixels:
        return
    raise ImageTooLarge(
        f"the image has {pixels:,} pixels, over the limit of {settings.max_pixels:,} (TILECHORD_MAX_PIXELS) "
        "for an image decoded or encoded whole; a tiled or striped TIFF edited into a TIFF streams, up to "
        f"{settings.max_stream_pixels:,} (TILECHORD_MAX_STREAM_PIXELS)"
    )


class Client:
    """Submits jobs with one set of :class:`Settings`.

    The module-level functions use a shared client configured from the environment; make
    your own to point at another Redis or change limits without touching the environment.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        from ..worker.app import load_plugins

        #: the settings as given (before an embedded cluster's URL fills in :attr:`settings`)
        self.configured = Settings.from_env() if settings is None else settings
        load_plugins(self.configured.plugins)
        self._lock = threading.Lock()
        self._app: TilechordCelery | None = None

    def _connect(self) -> TilechordCelery:
        # The worker package is imported on the first job, not with tilechord: an app
        # (and its task definitions) is made only when something is sent.
        from ..worker.app import create_app

        with self._lock:
            if self._app is None:
                settings = self.configured
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
        self, data: bytes | Path, ops: Ops, grid: GridSpec, format: str | None
    ) -> tuple[Pipeline, Grid, SourceInfo, str | None]:
        """Validate a job completely without enqueuing anything (*data*: bytes, or a big TIFF's path)."""
        planned = self._prepare_any(data, parse_pipeline(ops), grid, format)
        return planned.pipeline, planned.grid, planned.info, planned.format

    def _plan(
        self, data: bytes, pipeline: Pipeline, grid: GridSpec, format: str | None, checked: Checked | None
    ) -> _Planned:
        settings = self.configured
        by_region = _by_region(data)
        limit = max(settings.max_pixels, settings.max_stream_pixels) if by_region else settings.max_pixels
        info = inspect_source(data, limit, by_region=by_region)
        return self._plan_info(info, by_region, data, pipeline, grid, format, checked)

    def _plan_info(
        self,
        info: SourceInfo,
        by_region: bool,
        data: bytes | None,
        pipeline: Pipeline,
        grid: GridSpec,
        format: str | None,
        checked: Checked | None,
    ) -> _Planned:
        """:meth:`_plan` from the source's header on (*data*: ``None`` for a file never read whole)."""
        settings = self.configured
        limit = max(settings.max_pixels, settings.max_stream_pixels) if by_region else settings.max_pixels
        fmt = format if format is not None else info.format
        key = (info.mode, fmt)
        if checked is not None and key in checked:  # a batch: same pipeline, same mode and format
            fmt = checked[key]
        else:
            out_mode = pipeline.check_mode(info.mode)
            if fmt is not None:
                fmt = check_format(fmt, out_mode)
            if checked is not None:
                checked[key] = fmt
        frames = frame_count(info, fmt, limit)
        stream = streams_output(pipeline, fmt, pipeline.check_mode(info.mode), info.size, frames)
        if not (by_region and stream):  # some process holds the image: the usual limit
            _check_limit(info, settings)
            frames = frame_count(info, fmt, settings.max_pixels)
        used = self._grid(grid, info, pipeline, stream)
        if frames > 1 and fmt is not None:  # every frame the output holds, from the file itself
            assert data is not None  # a file read by its header only has one frame (_plan_file)
            fmt = _check_frames(pipeline, inspect_frames(data, settings.max_pixels, frames), fmt, info.format)
        return _Planned(pipeline, used, info, fmt, frames, stream)

    def _plan_file(
        self, path: Path, pipeline: Pipeline, grid: GridSpec, format: str | None
    ) -> _Planned | None:
        """Plan a big TIFF from its header alone, or ``None`` if it must be read whole after all."""
        settings = self.configured
        limit = max(settings.max_pixels, settings.max_stream_pixels)
        with path.open("rb") as handle:

            def read(offset: int, size: int) -> bytes:
                handle.seek(offset)
                return handle.read(size)

            if region_layout(read, path.stat().st_size) is None:
                return None
            handle.seek(0)
            image = open_file(handle, limit)
            info = SourceInfo(image.format, image.mode, image.size, count_frames(image))
        if info.frames > 1:
            return None
        return self._plan_info(info, True, None, pipeline, grid, format, None)

    def _prepare_any(
        self, data: bytes | Path, pipeline: Pipeline, grid: GridSpec, format: str | None
    ) -> Prepared:
        """:meth:`prepare` of bytes, or of a big TIFF's path (planned from its header, sent as read)."""
        if isinstance(data, Path):
            planned = self._plan_file(data, pipeline, grid, format)
            if planned is not None:
                p = planned
                prepared = Prepared(b"", p.pipeline, p.grid, p.info, p.format, p.frames, p.stream, data)
                size, most = data.stat().st_size, self.configured.max_bytes
                if size > most and not can_window(prepared, self.configured):
                    why = "; a tiled TIFF into a TIFF, with no global step and a window, has none"
                    raise too_large(data, size, most, why)
                return prepared
            data = read_source(data, self.configured.max_bytes)
        return self.prepare(data, pipeline, grid, format)

    def _grid(self, grid: GridSpec, info: SourceInfo, pipeline: Pipeline, stream: bool) -> Grid:
        """The grid used: clipped to the image; for a streamed output, aligned and bounded tiles."""
        settings = self.configured
        if _is_auto(grid):
            chosen = auto_grid(
                info.size[0], info.size[1], max(1, settings.workers),
                max_tile_pixels=CELL_BYTES // 4, most=settings.max_tiles,
            )  # fmt: skip
        else:
            chosen = parse_grid(grid, max_side=settings.max_side)
        used = stream_grid(info.size, chosen, pipeline.halo) if stream else chosen.clip(*info.size)
        if used.cols * used.rows > settings.max_tiles:
            raise InvalidGrid(
                f"grid {chosen} makes {used.cols * used.rows} tiles, over the limit of "
                f"{settings.max_tiles} (TILECHORD_MAX_TILES)"
                + (" (a streamed job's tiles hold at most 48 MB each)" if stream else "")
            )
        return used

    def prepare(
        self,
        data: bytes,
        pipeline: Pipeline,
        grid: GridSpec,
        format: str | None,
        checked: Checked | None = None,
    ) -> Prepared:
        """Check a job completely (:meth:`plan`, and every frame) and count its tiles; nothing is sent.

        The first half of :meth:`submit`; :meth:`start_prepared` is the second.  The async face
        and :meth:`map` call the two apart.  *checked* caches the pipeline's checks by mode.
        """
        p = self._plan(data, pipeline, grid, format, checked)
        return Prepared(data, p.pipeline, p.grid, p.info, p.format, p.frames, p.stream)

    def start_prepared(self, job: Prepared, timeout: float | None, *, window: bool = False) -> Job:
        """Store a prepared job's source and send its split; its keys go again if sending fails.

        *window*: a big TIFF or PNG into a TIFF may be sent as its tiles need it
        (:mod:`tilechord.worker.window`): only for :meth:`submit`, whose :class:`Job` waits for
        it; the async face and :meth:`map` send every source whole.
        """
        from ..worker.canvas import split_signature

        app = self.app
        keys = JobKeys(new_job_id())
        sent = plan_window(job, self.configured) if window else None  # a big TIFF or PNG into a TIFF
        spec = JobSpec(
            keys.job_id, job.pipeline.to_json(), (job.grid.cols, job.grid.rows), job.format, job.frames,
            job.stream, sent is not None,
        )  # fmt: skip
        info = job.info
        describe = (
            f"{info.size[0]}x{info.size[1]} {info.format or 'raw'} {info.mode}, "
            f"grid {job.grid}, [{job.pipeline}]"
        )
        limit = self.configured.job_timeout if timeout is None else timeout
        feeder: Window | None = None
        if sent is not None:  # only the skeleton now; the pieces from the window's thread
            feeder = sent.open(app.store, keys, self.configured.window)
        elif job.path is not None:  # a big file: sent in chunks as it is read, never held here
            if (size := job.path.stat().st_size) > self.configured.max_bytes:  # no window after all
                raise too_large(job.path, size, self.configured.max_bytes)
            app.store.open_job(keys)
            try:
                with job.path.open("rb") as handle:
                    app.store.put_file(keys, keys.source, handle)
            except BaseException:
                app.store.cleanup(keys)
                raise
        else:
            app.store.open_jobs([(keys, job.data)])  # live mark and source in one round trip
        try:
            if feeder is not None:
                feeder.start()
            # Expires with the wait: a split nobody waits for any more is never run.
            split_signature(app, spec, describe).apply_async(expires=limit)
        except BaseException:
            if feeder is not None:
                feeder.close()
            app.store.cleanup(keys)
            raise
        return Job(app, keys, job.tiles, job.format, limit, len(job.pipeline.global_steps), feeder)

    def submit(
        self,
        source: Source,
        ops: Ops = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        format: str | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Check the job, store the source in Redis and start the canvas; returns at once."""
        pipeline = parse_pipeline(ops)
        path = big_tiff(source)
        if path is not None:  # planned from its header, sent as it is read
            return self.start_prepared(self._prepare_any(path, pipeline, grid, format), timeout, window=True)
        data = read_source(source, self.configured.max_bytes)
        return self.start_prepared(self.prepare(data, pipeline, grid, format, None), timeout, window=True)

    def process(
        self,
        source: Source,
        ops: Ops = None,
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
        ops: Ops = None,
        *,
        grid: GridSpec = DEFAULT_GRID,
        timeout: float | None = None,
    ) -> Image.Image:
        """Run a job on an in-memory image; pixels travel raw both ways, never encoded."""
        if not isinstance(image, Image.Image):
            raise InvalidImage(f"process_image takes a PIL.Image.Image, not {type(image).__name__}")
        image.load()
        prepared = self.prepare(pack_raw(image), parse_pipeline(ops), grid, None, None)
        result, _ = unpack_raw(self.start_prepared(prepared, timeout).get())
        return result

    def map(
        self,
        sources: Iterable[Source],
        ops: Ops = None,
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
        (and :data:`~tilechord.client.batch.BATCH_BYTES`) to a task, since a Celery round
        trip costs more than editing one of them; their ``job_id`` is ``<batch task
        id>-<place in it>``.  Every source yields exactly one :class:`MapResult`, in
        completion order (``index`` gives the position); a bad image is a failed result,
        not an exception.  A malformed pipeline or grid raises at once, and a lost broker
        raises :class:`BrokerUnavailable`.  ``on_progress`` is called with a
        :class:`MapProgress` (in this thread) whenever something changes.  Closing the
        iterator early cancels the jobs still in flight.
        """
        settings = self.configured
        workers = max(1, settings.workers)
        limit = 2 * workers if jobs is None else jobs
        if limit < 1:
            raise ValueError(f"jobs must be at least 1, not {limit}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        pipeline = parse_pipeline(ops)
        if not _is_auto(grid):
            parse_grid(grid, max_side=settings.max_side)
        options = MapOptions(pipeline, grid, format, timeout, settings.job_timeout, limit, batch, workers,
                             settings.max_bytes)  # fmt: skip
        # The app is reached only when a job is sent: a map of sources that all fail their
        # checks starts no local cluster.
        yield from Mapper(
            lambda: self.app, self.prepare, self.start_prepared, sources, options, on_progress
        ).run()

    # -- the asyncio face: the same jobs, awaited (see tilechord.client.aio) -----------------

    def _aio(self) -> AsyncClient:
        from .aio import for_client  # aio imports this module; imported here, no cycle

        return for_client(self)

    async def asubmit(self, source: Source, ops: Ops = None, **options: Any) -> AsyncJob:
        """:meth:`submit` for an event loop: ``grid``, ``format``, ``timeout`` as there."""
        return await self._aio().asubmit(source, ops, **options)

    async def aprocess(self, source: Source, ops: Ops = None, **options: Any) -> bytes:
        """:meth:`process` for an event loop: ``grid``, ``format``, ``timeout`` as there."""
        return await self._aio().aprocess(source, ops, **options)

    async def aprocess_image(self, image: Image.Image, ops: Ops = None, **options: Any) -> Image.Image:
        """:meth:`process_image` for an event loop: ``grid``, ``timeout`` as there."""
        return await self._aio().aprocess_image(image, ops, **options)

    def amap(
        self, sources: Iterable[Source] | AsyncIterable[Source], ops: Ops = None, **options: Any
    ) -> AsyncGenerator[MapResult, None]:
        """:meth:`map` for an event loop (``async for``): ``grid``, ``format``, ``timeout``,
        ``jobs``, ``on_progress`` as there; every source is a job of its own."""
        return self._aio().amap(sources, ops, **options)

    def close(self) -> None:
        with self._lock:
            if self._app is not None:
                self._app.close()
                self._app = None
