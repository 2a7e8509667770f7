"""The client's half of a windowed job: send the pieces, drain the edited tiles.

See :mod:`tilechord.worker.window` for why.  One thread per windowed job, started when the
job is sent and ended when every tile is drained (or the job ends otherwise): it stores a
tile's piece only while fewer than ``window`` tiles are sent and not yet drained, and takes
each finished tile out of Redis into a spool file of its own (anonymous, on local disk),
from which :meth:`Job.save` writes the output TIFF at the end.  A thread and not the waiting
call: a job must go on while its caller does something else, between :meth:`Client.submit`
and :meth:`Job.save`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from ..errors import JobFailed, JobGone
from ..imaging.raw import Data, pack_raw
from ..imaging.tiffregion import TiffLayout
from ..worker.stream import strip_tiles
from ..worker.window import FEEDER_TTL, cell_piece

if TYPE_CHECKING:
    from ..worker.keys import JobKeys
    from ..worker.specs import TileSpec
    from ..worker.store import BlobStore

__all__ = ["Pieces", "Window", "png_pieces", "tiff_pieces"]

#: Makes, in the window's thread, each tile's ``(index, piece)`` in the tiles' order.
Pieces: TypeAlias = "Callable[[], Generator[tuple[int, bytes], None, None]]"


def tiff_pieces(path: Path, layout: TiffLayout, tiles: list[TileSpec]) -> Pieces:
    """A TIFF file's pieces: the segments each tile's cut touches, read from the file as sent."""

    def make() -> Generator[tuple[int, bytes], None, None]:
        with path.open("rb") as handle:
            length = os.fstat(handle.fileno()).st_size
            for tile in tiles:
                read = functools.partial(_pread, handle.fileno())
                yield tile.index, cell_piece(layout, read, length, tile.cut)

    return make


def _pread(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


def png_pieces(data: Data, tiles: list[TileSpec], max_pixels: int) -> Pieces | None:
    """A PNG's pieces: each tile's pixels, decoded strip by strip from the top; ``None`` if it
    does not decode so (interlaced)."""
    if strip_tiles(data, tiles, max_pixels) is None:
        return None

    def make() -> Generator[tuple[int, bytes], None, None]:
        cut = strip_tiles(data, tiles, max_pixels)
        assert cut is not None
        for tile, image in cut:
            yield tile.index, pack_raw(image)

    return make


#: Seconds between the drain's looks at the finished tiles.
LOOK_EVERY = 0.05


class Window:
    """Feeds a windowed job's pieces from *path* and drains its edited tiles into a spool file."""

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
        self._store.beat(self._keys, FEEDER_TTL)
        self._beaten = time.monotonic()
        self._thread.start()

    def _beat(self) -> None:
        """Renew the job's mark that its client still sends, once a second."""
        if time.monotonic() - self._beaten >= 1.0:
            self._store.beat(self._keys, FEEDER_TTL)
            self._beaten = time.monotonic()

    def _run(self) -> None:
        try:
            with contextlib.closing(self._pieces()) as pieces:
                self._feed_and_drain(pieces)
        except JobGone:
            pass  # cancelled, failed or expired: whoever waits hears why from the job itself
        except BaseException as exc:  # Redis lost, the file gone ...: the waiting call raises it
            self._error = exc

    def _feed_and_drain(self, pieces: Iterator[tuple[int, bytes]]) -> None:
        sent = 0
        while len(self._spans) < self._tiles and not self._stop.is_set():
            self._beat()
            while sent < self._tiles and sent - len(self._spans) < self._size:
                tile, piece = next(pieces)
                self._store.put(self._keys, self._keys.tile(tile), piece)
                sent += 1
                self.most_in_flight = max(self.most_in_flight, sent - len(self._spans))
            finished = sorted(self._store.finished_tiles(self._keys) - self._spans.keys())
            for tile in finished:
                self._drain(tile)
            if not finished:
                if not self._store.is_live(self._keys):
                    return  # the job ended (failed, cancelled, expired): nothing more will finish
                self._stop.wait(LOOK_EVERY)

    def _drain(self, tile: int) -> None:
        """Move one finished tile's edited core from Redis to the spool, and drop its piece."""
        data = self._store.get_pixels(self._keys, self._keys.edited(tile))
        offset = self._spool.seek(0, os.SEEK_END)
        self._spool.write(data)
        self._spans[tile] = (offset, len(data))
        self._store.drop(self._keys, self._keys.edited(tile), self._keys.tile(tile))

    def finish(self, timeout: float) -> None:
        """Wait for the drain to take the last tile (the job's end message has come)."""
        self._thread.join(timeout)
        if self._error is not None:
            raise self._error
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
        """Stop the thread (if it still runs) and delete the spool."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self._spool.close()
