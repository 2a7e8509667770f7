"""A big image sent as its tiles need it: Redis holds a window of the job, not the image.

A job with a streamed TIFF out (see :mod:`tilechord.worker.stream`) keeps every
worker's memory bounded, but stored whole, its source and its edited tiles would still
fill Redis in proportion to the image.  So the client that holds the source sends it
piece by piece:

* the **skeleton** (``keys.source``): what the split and the merge open for the layout
  and metadata.  Of a tiled or striped TIFF, every byte of the file that is not tile or
  strip data (header, IFDs, tag values: a few hundred KB even for gigapixels), from which
  each edit also parses the layout; of a PNG, its chunks before the image data;
* one **piece** per job tile (``keys.tile(i)``): of a tiled TIFF, the bytes of the TIFF
  tiles the job tile's region (core and halo) touches: the ring of TIFF tiles a halo
  reaches into goes in two pieces (with 512-pixel TIFF tiles and 3072-pixel job tiles,
  about 1.8 times the file is sent in all), so that no piece waits for another tile's;
  of a PNG, the tile's pixels, decoded by the client strip by strip from the top
  (:func:`tilechord.worker.stream.strip_tiles`), as the split does without a window.
  A striped TIFF has no window: its strips span the image's width, so every job tile of
  a row would carry the whole row's strips; it is sent whole, as before.

Pieces go at most :attr:`~tilechord.config.Settings.window` tiles ahead of the client's
**drain**, which takes each edited tile out of Redis once it is finished (into a spool
file of its own) and deletes its piece.  So Redis holds at most ``window`` pieces and a
few edited tiles of a job at once, whatever the image's size, and edits start as soon as
their piece is in, before the rest is read.  The client side is :mod:`tilechord.client.window`.

The waiting half serves a PNG without a window too (a *fed* plan): its split sends the
chord first, then stores each tile as it decodes the PNG, and beats the same mark; its
edits wait for their tiles as a window's do, and each deletes its input once done.

An edit whose piece is not there yet waits a moment, then hands its message back (a retry
with a countdown) rather than hold a pool process the window needs: a tile lost with its
worker is sent again behind the later ones, and those must not wait for it forever.  The
client marks that it is still sending (:attr:`~tilechord.worker.keys.JobKeys.feeder`, renewed
every second): a waiting edit that finds the mark lapsed (the client died) drops the whole
job rather than wait for pieces nobody sends until its keys expire.  A
tile already finished (run again after its first run was drained) is skipped: its piece
is gone, and its result is already in the client's spool.
"""

from __future__ import annotations

import bisect
import struct
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from PIL import Image

from ..errors import InvalidImage, JobGone
from ..imaging.raw import Data, unpack_raw
from ..imaging.regions import Box, read_region, region_ranges
from ..imaging.tiffregion import ReadAt, TiffLayout, tiff_layout
from .keys import CHUNK_BYTES, JobKeys

if TYPE_CHECKING:
    from .app import TilechordCelery
    from .specs import TileSpec

__all__ = [
    "FEEDER_TTL",
    "PIECE_WAIT",
    "RangeReader",
    "Waiting",
    "cell_piece",
    "is_packed",
    "pack_ranges",
    "png_skeleton",
    "read_windowed",
    "skeleton",
    "source_reader",
]

_MAGIC = b"TCRG"
_HEAD = struct.Struct("<4sQI")  # magic, the file's length, how many ranges
_RANGE = struct.Struct("<QQ")  # offset, length
#: Seconds an edit waits for its piece before it hands its message back (see the module's docstring).
PIECE_WAIT = 1.0
#: Seconds the mark that a job's tiles are still being sent (by its client, or by a PNG's
#: split) lasts unrenewed; it is renewed every second or tile.  Once it lapses, an edit still
#: waiting for its piece drops the job: its sender is gone (a split lost with its worker is
#: run again, and renews it, well within this).
FEEDER_TTL = 30.0
_LOOK_EVERY = 0.02


def pack_ranges(length: int, blocks: Iterable[tuple[int, bytes]]) -> bytes:
    """Byte ranges ``(offset, data)`` of a file of *length* bytes, as one value for Redis."""
    items = sorted((offset, data) for offset, data in blocks if data)
    table = b"".join(_RANGE.pack(offset, len(data)) for offset, data in items)
    return _HEAD.pack(_MAGIC, length, len(items)) + table + b"".join(data for _, data in items)


def is_packed(value: Data) -> bool:
    """Whether *value* is a :func:`pack_ranges` value (a TIFF's skeleton, not a PNG's)."""
    return bytes(memoryview(value)[:4]) == _MAGIC


class RangeReader:
    """Reads byte ranges of a file from the parts of it that :func:`pack_ranges` packed.

    Several values may be given (the skeleton and a tile's piece): together they hold every
    byte a parse or a region read of that tile asks for.  A byte held by none reads as zero:
    a header parser's read-ahead may run into tile data nobody sent, which it never uses.
    """

    def __init__(self, *values: bytes | memoryview) -> None:
        blocks: list[tuple[int, memoryview]] = []
        self.length = 0
        for value in values:
            view = memoryview(value)
            magic, length, count = _HEAD.unpack_from(view)
            if magic != _MAGIC:
                raise InvalidImage("a windowed job's source part is damaged (not a packed range value)")
            self.length = max(self.length, length)
            at = _HEAD.size + count * _RANGE.size
            for n in range(count):
                offset, size = _RANGE.unpack_from(view, _HEAD.size + n * _RANGE.size)
                blocks.append((offset, view[at : at + size]))
                at += size
        blocks.sort(key=lambda block: block[0])
        self._starts = [offset for offset, _ in blocks]
        self._blocks = blocks

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)``, clipped to the file's length (for a header parse)."""
        return self._read(offset, size)[0]

    def strict(self, offset: int, size: int) -> bytes:
        """:meth:`read` for pixels: :class:`InvalidImage` if any byte asked for was not sent."""
        data, covered = self._read(offset, size)
        if covered != len(data):
            raise InvalidImage(f"a windowed tile's piece lacks bytes {offset}..{offset + size} of its source")
        return data

    def _read(self, offset: int, size: int) -> tuple[bytes, int]:
        size = max(0, min(size, self.length - offset))
        out, covered = bytearray(size), 0
        n = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while n < len(self._blocks) and self._blocks[n][0] < offset + size:
            start, data = self._blocks[n]
            lo, hi = max(start, offset), min(start + len(data), offset + size)
            if lo < hi:
                out[lo - offset : hi - offset] = data[lo - start : hi - start]
                covered += hi - lo
            n += 1
        return bytes(out), covered


def source_reader(app: TilechordCelery, keys: JobKeys, window: bool) -> tuple[ReadAt, int]:
    """A reader of the job's TIFF source: the chunked file, or a windowed job's skeleton."""
    if not window:
        return app.store.reader(keys, keys.source)
    reader = RangeReader(app.store.get_pixels(keys, keys.source))
    return reader.read, reader.length


def skeleton(layout: TiffLayout, read: ReadAt, length: int) -> bytes | None:
    """Every byte of the file outside its segments, packed; ``None`` if that is over a chunk."""
    spans = sorted(zip(layout.offsets, layout.bytecounts, strict=True))
    gaps: list[tuple[int, int]] = []
    at = 0
    for offset, count in spans:
        if offset > at:
            gaps.append((at, offset - at))
        at = max(at, offset + count)
    if at < length:
        gaps.append((at, length - at))
    if sum(size for _, size in gaps) > CHUNK_BYTES:
        return None  # much besides the pixels (a second page, a thumbnail): send the file whole
    return pack_ranges(length, ((offset, read(offset, size)) for offset, size in gaps))


def cell_piece(layout: TiffLayout, read: ReadAt, length: int, cut: Box) -> bytes:
    """The segments a tile's cut box touches, packed: all its edit reads besides the skeleton."""
    blocks = []
    for offset, size in region_ranges(layout, cut):
        data = read(offset, size)
        if len(data) != size:  # the file was cut short since it was planned
            raise InvalidImage(
                f"the TIFF source gave {len(data)} bytes at {offset}, not {size}: did it change?"
            )
        blocks.append((offset, data))
    return pack_ranges(length, blocks)


class Waiting(Exception):
    """An edit's piece is not in Redis yet: hand the message back and try again shortly."""


def _piece_state(app: TilechordCelery, keys: JobKeys, tile: int) -> str:
    """A windowed tile's ``"finished"``, ``"there"`` (its piece), ``"missing"``, or ``"orphaned"``
    (missing, and its client has stopped sending); :class:`JobGone` if the job is gone."""
    if tile in app.store.finished_tiles(keys):
        return "finished"
    missing = app.store.missing(keys, [keys.tile(tile), keys.feeder])
    return "there" if keys.tile(tile) not in missing else "orphaned" if keys.feeder in missing else "missing"


def read_windowed(app: TilechordCelery, keys: JobKeys, tile: TileSpec) -> Image.Image | None:
    """A windowed tile's input, once its piece is in; ``None`` if the tile is finished already.

    A TIFF's tile decodes its region from the skeleton and its piece; a PNG's piece is the
    tile's pixels, decoded from the top by the client (a window) or by the split (a fed plan).

    Raises :class:`Waiting` after :data:`PIECE_WAIT` seconds without the piece, and
    :class:`~tilechord.errors.JobGone` once the job is gone.
    """
    store = app.store
    give_up = time.monotonic() + PIECE_WAIT
    while True:
        state = _piece_state(app, keys, tile.index)
        if state == "finished":
            return None
        if state == "there":
            break
        if state == "orphaned":  # nobody will send the rest (nor, for a client, wait): end the job
            store.cleanup(keys)
            raise JobGone(f"job {keys.job_id}: whatever sent its tiles stopped; the job is dropped")
        if time.monotonic() >= give_up:
            raise Waiting(f"{tile.label}: its source is not sent yet")
        time.sleep(_LOOK_EVERY)
    try:
        piece = store.get_pixels(keys, keys.tile(tile.index))
    except JobGone:  # drained and dropped since it was seen: finished by another run of it
        if _piece_state(app, keys, tile.index) == "finished":
            return None
        raise
    if not tile.region:  # a PNG's tile, decoded by the client: its raw pixels
        return unpack_raw(piece)[0]
    reader = RangeReader(store.get_pixels(keys, keys.source), piece)
    return read_region(reader.strict, tiff_layout(reader.read, reader.length), tile.cut)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_skeleton(data: Data) -> bytes | None:
    """A PNG's bytes up to its first image data chunk: what Pillow's ``open`` reads.

    The split and the merge open it for the size, mode and metadata (the chunks that
    matter to a TIFF out, pHYs and iCCP, come before the image data); the pixels go as
    each tile's piece, decoded by the client.  ``None`` if *data* is no PNG.
    """
    view = memoryview(data)
    if bytes(view[:8]) != _PNG_SIGNATURE:
        return None
    at = 8
    while at + 8 <= len(view):
        length, kind = struct.unpack_from(">I4s", view, at)
        if kind == b"IDAT":
            return bytes(view[: at + 8])
        at += 12 + length
    return None
