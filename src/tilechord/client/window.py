"""The client's half of a windowed job: send the pieces, drain the edited tiles.

See :mod:`tilechord.worker.window` for why.  One thread per windowed job, started when the
job is sent and ended when every tile is drained, or when the job ends otherwise (failed,
cancelled, expired): it stores a tile's piece only while fewer than ``window`` tiles are
sent and not yet drained, and takes each finished tile out of Redis into a spool file of
its own (anonymous, in the temporary directory), from which :meth:`Job.save` writes the
output TIFF at the end.  A thread and not the waiting call: a job must go on while its
caller does something else, between :meth:`Client.submit` and :meth:`Job.save`.  What the
thread meets (Redis lost, the file changed, a full disk) is raised, as a
:class:`~tilechord.errors.TilechordError`, by the call that waits for the job.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import InvalidImage, JobFailed, JobGone, TilechordError
from ..imaging.raw import Data, pack_raw
from ..imaging.tiffregion import TiffLayout, tiff_layout
from ..worker.specs import JobSpec, Plan
from ..worker.stream import strip_tiles
from ..worker.window import FEEDER_TTL, cell_piece, png_skeleton, skeleton

if TYPE_CHECKING:
    from ..config import Settings
    from ..worker.keys import JobKeys
    from ..worker.specs import TileSpec
    from ..worker.store import BlobStore
    from .job import Prepared

__all__ = ["Pieces", "PlannedWindow", "PngPieces", "TiffPieces", "Window", "can_window", "plan_window"]

#: Seconds between the drain's looks at the finished tiles.
LOOK_EVERY = 0.05
#: Seconds between renewals of the job's mark that its client still sends.
BEAT_EVERY = 1.0


class Pieces(Protocol):
    """Each tile's ``(index, piece)``, in the tiles' order, made as the window's thread asks."""

    def __iter__(self) -> Iterator[tuple[int, bytes]]: ...

    def close(self) -> None: ...


class TiffPieces:
    """A tiled TIFF file's pieces, read from the file opened when the job was sent.

    Opened then, so the file may be moved or deleted once :meth:`Client.submit` returns; a
    file changed in place since (its size or time) is refused rather than read as another.
    """

    def __init__(self, path: Path, layout: TiffLayout, tiles: list[TileSpec]) -> None:
        self._path, self._layout, self._tiles = path, layout, tiles
        self._file = path.open("rb")
        self._stat = os.fstat(self._file.fileno())

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        fd = self._file.fileno()
        for tile in self._tiles:
            now = os.fstat(fd)
            if (now.st_size, now.st_mtime_ns) != (self._stat.st_size, self._stat.st_mtime_ns):
                raise InvalidImage(f"{self._path} changed while it was being sent; submit it again")
            read = lambda offset, size: os.pread(fd, size, offset)  # noqa: E731 (one line, one use)
            yield tile.index, cell_piece(self._layout, read, self._stat.st_size, tile.cut)

    def close(self) -> None:
        self._file.close()


class PngPieces:
    """A PNG's pieces: each tile's pixels, decoded strip by strip from the top."""

    def __init__(self, data: Data, tiles: list[TileSpec], max_pixels: int) -> None:
        self._data, self._tiles, self._max_pixels = data, tiles, max_pixels

    @classmethod
    def of(cls, data: Data, tiles: list[TileSpec], max_pixels: int) -> PngPieces | None:
        """The pieces, or ``None`` for a PNG that does not decode strip by strip (interlaced)."""
        return cls(data, tiles, max_pixels) if strip_tiles(data, tiles, max_pixels) is not None else None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        cut = strip_tiles(self._data, self._tiles, self._max_pixels)
        assert cut is not None  # checked by of()
        for tile, image in cut:
            yield tile.index, pack_raw(image)

    def close(self) -> None:
        self._data = b""


class Window:
    """Feeds a windowed job's pieces and drains its edited tiles into a spool file."""

    def __init__(self, store: BlobStore, keys: JobKeys, pieces: Pieces, tiles: int, size: int) -> None:
        self._store, self._keys = store, keys
        self._pieces, self._tiles, self._size = pieces, tiles, max(1, size)
        self._spool = tempfile.TemporaryFile(prefix="tilechord-")  # noqa: SIM115 (closed by close())
        self._spans: dict[int, tuple[int, int]] = {}  # tile -> (offset, length) in the spool
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._beaten = 0.0
        self.most_in_flight = 0  # the most tiles sent and not yet drained, for tests and the bench
        self._thread = threading.Thread(target=self._run, name=f"tilechord-window-{keys.job_id}", daemon=True)

    def start(self) -> None:
        """Mark the job as fed (before any edit can look) and start sending and draining."""
        self._beat(force=True)
        self._thread.start()

    def _beat(self, force: bool = False) -> None:
        """Renew the job's mark that its client still sends, once a second."""
        if force or time.monotonic() - self._beaten >= BEAT_EVERY:
            self._store.beat(self._keys, FEEDER_TTL)
            self._beaten = time.monotonic()

    def _run(self) -> None:
        try:
            self._feed_and_drain(iter(self._pieces))
        except JobGone:
            pass  # cancelled, failed or expired: whoever waits hears why from the job itself
        except BaseException as exc:  # Redis lost, the file changed, a full disk: raised by check()
            self._error = exc

    def _feed_and_drain(self, pieces: Iterator[tuple[int, bytes]]) -> None:
        sent = 0
        while len(self._spans) < self._tiles and not self._stop.is_set():
            while sent < self._tiles and sent - len(self._spans) < self._size:
                self._beat()  # per piece: a slow disk or link must not starve the mark
                tile, piece = next(pieces)
                self._store.put(self._keys, self._keys.tile(tile), piece)
                sent += 1
                self.most_in_flight = max(self.most_in_flight, sent - len(self._spans))
            self._beat()
            finished, over = self._store.watch(self._keys)
            for tile in sorted(finished - self._spans.keys()):
                self._drain(tile)
                self._beat()
            if over:  # ended: after success every tile is in the set now (read again: it may
                for tile in sorted(self._store.finished_tiles(self._keys) - self._spans.keys()):
                    self._drain(tile)  # have grown between the two reads); after a failure, none matters
                return
            self._stop.wait(LOOK_EVERY)

    def _drain(self, tile: int) -> None:
        """Move one finished tile's edited core from Redis to the spool, and drop its piece."""
        data = self._store.get_pixels(self._keys, self._keys.edited(tile))
        offset = self._spool.seek(0, os.SEEK_END)
        self._spool.write(data)
        self._spans[tile] = (offset, len(data))
        self._store.drop(self._keys, self._keys.edited(tile), self._keys.tile(tile))

    def check(self) -> None:
        """Raise what stopped the thread, as a :class:`TilechordError` (the waiting call calls it)."""
        error = self._error
        if error is None:
            return
        if isinstance(error, TilechordError):
            raise error
        raise JobFailed(
            f"job {self._keys.job_id}: sending its source or taking its tiles failed: {error}"
        ) from error

    def finish(self, timeout: float) -> None:
        """Wait for the drain to take the last tile (the job's end message has come)."""
        self._thread.join(timeout)
        self.check()
        if self._thread.is_alive() or len(self._spans) < self._tiles:
            got, count = len(self._spans), self._tiles
            raise JobFailed(f"job {self._keys.job_id}: {got} of {count} edited tiles reached the client")
        self._spool.flush()

    def reader(self, tile: int) -> Callable[[int, int], bytes]:
        """A reader of byte ranges of one drained tile's edited core (what the TIFF writer reads)."""
        base, length = self._spans[tile]
        fd = self._spool.fileno()

        def read(offset: int, size: int) -> bytes:
            size = max(0, min(size, length - offset))
            return os.pread(fd, size, base + offset)

        return read

    def close(self) -> None:
        """Stop the thread (if it still runs), close the source and delete the spool."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self._pieces.close()
            self._spool.close()


def can_window(job: Prepared, settings: Settings) -> bool:
    """Whether a job may go through a window: a tiled TIFF file or a PNG, edited into a
    streamed TIFF by a pipeline with no global step (its statistics read every tile first),
    with a window above 0.  A striped TIFF has none (see :mod:`tilechord.worker.window`)."""
    if not job.stream or job.pipeline.global_steps or settings.window < 1:
        return False
    if job.path is None:
        return png_skeleton(job.data) is not None
    try:
        with job.path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return tiff_layout(lambda offset, n: os.pread(handle.fileno(), n, offset), size).tiled
    except (OSError, TilechordError):  # the whole-file path says what is wrong
        return False


@dataclass(frozen=True)
class PlannedWindow:
    """A windowed job before it is sent: its skeleton, its pieces and how many tiles."""

    skeleton: bytes
    pieces: Pieces
    tiles: int

    def open(self, store: BlobStore, keys: JobKeys, size: int) -> Window:
        """Open the job with its skeleton as its source, and make its (unstarted) window."""
        window: Window | None = None
        try:
            window = Window(store, keys, self.pieces, self.tiles, size)
            store.open_jobs([(keys, self.skeleton)])
        except BaseException as exc:
            self.pieces.close()
            if window is not None:
                window.close()
            store.cleanup(keys)
            if isinstance(exc, OSError):  # no room for the spool, say
                raise JobFailed(f"cannot start the job: {exc}") from None
            raise
        return window


def plan_window(job: Prepared, settings: Settings) -> PlannedWindow | None:
    """The window of a job that may have one (:func:`can_window`), else ``None``."""
    from ..worker.canvas import job_tiles

    if not can_window(job, settings):
        return None
    spec = JobSpec("", [], (job.grid.cols, job.grid.rows), job.format, 1, True, True)
    tiles = job_tiles(
        spec, Plan((job.info.size,), region=job.path is not None, stream=True), job.pipeline.halo
    )
    if job.path is None:  # a PNG: decoded here strip by strip, each tile's pixels sent
        bones, png = png_skeleton(job.data), PngPieces.of(job.data, tiles, settings.max_pixels)
        return None if bones is None or png is None else PlannedWindow(bones, png, len(tiles))
    try:
        with job.path.open("rb") as handle:

            def read(offset: int, size: int) -> bytes:
                return os.pread(handle.fileno(), size, offset)

            length = os.fstat(handle.fileno()).st_size
            layout = tiff_layout(read, length)
            bones = skeleton(layout, read, length)
        return (
            None if bones is None else PlannedWindow(bones, TiffPieces(job.path, layout, tiles), len(tiles))
        )
    except OSError as exc:
        raise InvalidImage(f"cannot read {job.path}: {exc}") from None
