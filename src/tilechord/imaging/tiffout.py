"""A tiled BigTIFF written from compressed tiles, so a merge never holds the output image.

Each ``edit`` of a streaming job compresses its core into TIFF tiles (:func:`encode_tiles`,
the very bytes tifffile would write for them) and stores them as one value
(:func:`pack_segments`); the merge feeds them, in the file's row-major tile order
(:func:`tiff_order`), to tifffile's writer (:func:`write_tiled`), which writes each tile as
it comes.  So the merge holds a band of compressed tiles at a time, never the pixels.

Tiles are ``adobe_deflate`` (TIFF compression 8, zlib streams) with the horizontal
predictor (2) for integer samples, the floating-point one (3) for mode F and none for
mode 1 (packed bits), encoded through imagecodecs exactly as tifffile's own writer
encodes them (same codec, same level, same predictor axis, same zero padding of edge tiles),
so Pillow (libtiff) and tifffile both read the file back to the core's pixels.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from ..errors import InvalidGrid, InvalidImage, UnsupportedFormat

__all__ = [
    "TILE",
    "LEVEL",
    "COMPRESSION",
    "supported",
    "encode_tiles",
    "pack_segments",
    "unpack_segments",
    "segment_spans",
    "write_tiled",
    "tiff_order",
    "band_segments",
    "tile_count",
]

#: The output's TIFF tile side (pixels); job cores are cut on multiples of it.
TILE = 512
#: The deflate level: libdeflate's 1 is ~5x faster than its default 6 for ~10 % more bytes.
LEVEL = 1
#: TIFF tag 259 value: Adobe deflate (zlib streams), what tifffile calls "adobe_deflate".
COMPRESSION = 8

_MAGIC = b"TCSG"
_HEAD = struct.Struct("<4sI")
_LENGTH = struct.Struct("<Q")


@dataclass(frozen=True)
class _Layout:
    """How one Pillow mode is stored: numpy dtype, samples per pixel, and the TIFF tags."""

    dtype: str
    samples: int
    photometric: str
    extrasamples: tuple[int, ...] = ()
    predictor: int = 2


# Each reads back through Pillow's TiffImagePlugin.OPEN_INFO to the same mode (little endian,
# contiguous samples); RGBA's and LA's alpha is unassociated (extrasamples 2), as Pillow writes it.
_LAYOUTS: dict[str, _Layout] = {
    "1": _Layout("?", 1, "minisblack", predictor=1),
    "L": _Layout("u1", 1, "minisblack"),
    "LA": _Layout("u1", 2, "minisblack", (2,)),
    "RGB": _Layout("u1", 3, "rgb"),
    "RGBA": _Layout("u1", 4, "rgb", (2,)),
    "CMYK": _Layout("u1", 4, "separated"),
    "I;16": _Layout("<u2", 1, "minisblack"),
    "I": _Layout("<i4", 1, "minisblack"),
    "F": _Layout("<f4", 1, "minisblack", predictor=3),
}


def supported(mode: str) -> bool:
    """Whether this writer stores the Pillow ``mode`` so that Pillow reads the same mode back."""
    return mode in _LAYOUTS


def _layout(mode: str) -> _Layout:
    """The storage of ``mode``, or :class:`UnsupportedFormat` for one this writer cannot hold."""
    try:
        return _LAYOUTS[mode]
    except KeyError:
        raise UnsupportedFormat(
            f"the streaming TIFF writer cannot hold mode {mode!r}; it holds {', '.join(_LAYOUTS)}"
        ) from None


def _deflate() -> Any:
    """The zlib-stream encoder tifffile itself uses for compression 8 (libdeflate if built)."""
    if imagecodecs.DEFLATE.available:
        return imagecodecs.deflate_encode
    return imagecodecs.zlib_encode


def _pixels(core: Image.Image, layout: _Layout) -> np.ndarray[Any, Any]:
    """The core as a (rows, columns, samples) array of the stored dtype (one copy of it)."""
    array = np.asarray(core)
    if array.dtype != np.dtype(layout.dtype):
        array = array.astype(layout.dtype)
    return array.reshape(core.height, core.width, layout.samples)


def _encode_one(chunk: np.ndarray[Any, Any], layout: _Layout, tile: int, level: int) -> bytes:
    """One tile as tifffile encodes it: zero-padded, predicted along the rows, deflated."""
    if chunk.shape[:2] != (tile, tile):
        padded = np.zeros((tile, tile, layout.samples), chunk.dtype)
        padded[: chunk.shape[0], : chunk.shape[1]] = chunk
        chunk = padded
    chunk = np.ascontiguousarray(chunk)
    data: Any
    if layout.dtype == "?":
        data = np.packbits(chunk, axis=-2).tobytes()
    elif layout.predictor == 2:
        data = imagecodecs.delta_encode(chunk, axis=-2)
    elif layout.predictor == 3:
        data = imagecodecs.floatpred_encode(chunk, axis=-2)
    else:
        data = chunk
    return bytes(_deflate()(data, level=level))


def encode_tiles(core: Image.Image, tile: int = TILE, *, level: int = LEVEL) -> list[bytes]:
    """The compressed TIFF tiles covering ``core``, row-major within it.

    ``core`` must start on a tile boundary of the output; its size is a multiple of ``tile``
    except at the image's right and bottom edges, whose tiles are padded with zeros, as
    tifffile pads them.  ``level`` must be the one tifffile would be given for equal bytes.
    """
    if tile <= 0 or tile % 16:
        raise InvalidGrid(f"a TIFF tile side must be a positive multiple of 16, not {tile}")
    layout = _layout(core.mode)
    pixels = _pixels(core, layout)
    out: list[bytes] = []
    for top in range(0, core.height, tile):
        for left in range(0, core.width, tile):
            chunk = pixels[top : top + tile, left : left + tile]
            out.append(_encode_one(chunk, layout, tile, level))
    return out


def tile_count(width: int, height: int, tile: int = TILE) -> int:
    """How many TIFF tiles cover a ``width`` x ``height`` area (the segments of one core)."""
    return math.ceil(width / tile) * math.ceil(height / tile)


def pack_segments(segments: Sequence[bytes | memoryview]) -> bytes:
    """One Redis value: a magic, the count, every segment's length, then the segments."""
    lengths = b"".join(_LENGTH.pack(len(s)) for s in segments)
    return b"".join([_HEAD.pack(_MAGIC, len(segments)), lengths, *segments])


def segment_spans(read: Callable[[int, int], bytes]) -> list[tuple[int, int]]:
    """``(offset, length)`` of every segment of a :func:`pack_segments` value, from its header alone.

    *read* fetches a byte range of the value, so a merge can then read one row of a job
    tile's TIFF tiles at a time instead of the whole value.
    """
    head = read(0, _HEAD.size)
    if len(head) < _HEAD.size:
        raise InvalidImage("a packed tile value is shorter than its header")
    magic, count = _HEAD.unpack(head)
    if magic != _MAGIC:
        raise InvalidImage("a packed tile value does not start with its magic")
    table = read(_HEAD.size, count * _LENGTH.size)
    if len(table) != count * _LENGTH.size:
        raise InvalidImage(f"a packed tile value is too short for its {count} lengths")
    start = _HEAD.size + count * _LENGTH.size
    spans: list[tuple[int, int]] = []
    for (length,) in _LENGTH.iter_unpack(table):
        spans.append((start, length))
        start += length
    return spans


def unpack_segments(data: bytes | bytearray | memoryview) -> list[memoryview]:
    """The segments of a :func:`pack_segments` value, as views into ``data`` (no copy)."""
    view = memoryview(data).cast("B")
    if len(view) < _HEAD.size:
        raise InvalidImage("a packed tile value is shorter than its header")
    magic, count = _HEAD.unpack_from(view)
    if magic != _MAGIC:
        raise InvalidImage("a packed tile value does not start with its magic")
    start = _HEAD.size + count * _LENGTH.size
    if len(view) < start:
        raise InvalidImage(f"a packed tile value is too short for its {count} lengths")
    out: list[memoryview] = []
    for index in range(count):
        (length,) = _LENGTH.unpack_from(view, _HEAD.size + index * _LENGTH.size)
        out.append(view[start : start + length])
        start += length
    if start != len(view):
        raise InvalidImage(f"a packed tile value holds {len(view)} bytes, its lengths say {start}")
    return out


def _exactly(segments: Iterable[bytes | memoryview], count: int) -> Iterator[bytes]:
    """``segments`` as bytes (what tifffile takes as a compressed tile), checked to be ``count``."""
    taken = 0
    for segment in segments:
        taken += 1
        if taken > count:
            raise InvalidImage(f"more than the {count} tiles the TIFF holds were given")
        if not segment:
            raise InvalidImage(f"tile {taken - 1} of the TIFF is empty")
        yield segment if isinstance(segment, bytes) else bytes(segment)
    if taken != count:
        raise InvalidImage(f"{taken} tiles were given, the TIFF holds {count}")


def write_tiled(
    fh: BinaryIO,
    size: tuple[int, int],
    mode: str,
    segments: Iterable[bytes | memoryview],
    tile: int = TILE,
    *,
    dpi: tuple[float, float] | None = None,
    icc: bytes | None = None,
) -> None:
    """Write a tiled BigTIFF of ``size`` and ``mode`` whose tiles are ``segments``, in TIFF order.

    ``segments`` (from :func:`encode_tiles`, ordered by :func:`tiff_order`) is consumed one
    tile at a time as tifffile writes it, so only the tile in hand is held.  ``fh`` must be
    seekable (tifffile writes the tile offsets into the IFD after the tiles); the TIFF starts
    at its current position, and it is left open.
    """
    layout = _layout(mode)
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"cannot write an empty {width}x{height} TIFF")
    count = tile_count(width, height, tile)
    shape = (height, width) if layout.samples == 1 else (height, width, layout.samples)
    tiles = _exactly(segments, count)
    # Named here: tifffile reads the stream's name (an int for tempfile.TemporaryFile, which it
    # refuses) and would write OME-XML into a file whose name holds ".ome.".
    handle = tifffile.FileHandle(fh, mode="wb", name="tilechord.tif", size=0)  # type: ignore[arg-type]
    with tifffile.TiffWriter(handle, bigtiff=True, byteorder="<") as writer:
        writer.write(
            itertools.islice(tiles, count),
            shape=shape,
            dtype=layout.dtype,
            photometric=layout.photometric,
            planarconfig="contig" if layout.samples > 1 else None,
            extrasamples=layout.extrasamples or None,
            tile=(tile, tile),
            compression=COMPRESSION,
            predictor=layout.predictor if layout.predictor > 1 else None,
            resolution=dpi,
            resolutionunit="INCH" if dpi is not None else None,
            iccprofile=icc,
            metadata=None,
            software=False,
        )
    for _ in tiles:  # raises if ``segments`` holds more tiles than the TIFF
        pass


def _cells(edges: Sequence[int], tile: int, what: str) -> list[tuple[int, int]]:
    """For each output tile along one axis: (job cell index, tile index within that cell)."""
    if len(edges) < 2 or edges[0] != 0:
        raise InvalidGrid(f"the {what} edges must start at 0 and end at the image size: {list(edges)}")
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise InvalidGrid(f"the {what} edges must increase: {list(edges)}")
    if any(e % tile for e in edges[1:-1]):
        raise InvalidGrid(f"the inner {what} edges must be multiples of {tile}: {list(edges)}")
    out: list[tuple[int, int]] = []
    for cell, (start, end) in enumerate(itertools.pairwise(edges)):
        out.extend((cell, index) for index in range(math.ceil((end - start) / tile)))
    return out


def tiff_order(
    col_edges: Sequence[int], row_edges: Sequence[int], tile: int = TILE
) -> Iterator[tuple[int, int]]:
    """``(job_tile_index, segment_index)`` for each tile of the output TIFF, in the file's order.

    The image is cut into a grid of job cells: column ``c`` spans
    ``[col_edges[c], col_edges[c + 1])`` and row ``r`` spans ``[row_edges[r], row_edges[r + 1])``,
    so both lists start at 0 and end at the image's width / height, and every inner edge is a
    multiple of ``tile``.  Job tiles are numbered row by row (``r * columns + c``), and each
    job tile's segments are its own TIFF tiles row by row, as :func:`encode_tiles` returns
    them.  The output's tiles are row-major over the whole image, so one row of output tiles
    takes one row of segments from every job cell of that band, left to right.
    """
    across = _cells(col_edges, tile, "column")
    down = _cells(row_edges, tile, "row")
    columns = len(col_edges) - 1
    widths = [math.ceil((b - a) / tile) for a, b in itertools.pairwise(col_edges)]
    for row_cell, row_in_cell in down:
        for col_cell, col_in_cell in across:
            yield row_cell * columns + col_cell, row_in_cell * widths[col_cell] + col_in_cell


def band_segments(
    col_edges: Sequence[int],
    row_edges: Sequence[int],
    reader: Callable[[int], Callable[[int, int], bytes]],
    tile: int = TILE,
) -> Iterator[memoryview]:
    """The output's tiles in TIFF order, read from each job tile's :func:`pack_segments` value.

    ``reader(job_tile_index)`` gives a reader of byte ranges of that value (``read(offset,
    length)``).  Each job tile's segment table is read once, when its first segment is due,
    then one row of its TIFF tiles at a time, so one row of the output's TIFF tiles (a strip
    ``tile`` rows high) is the most ever held, whatever the image's width or its cells' height.
    """
    columns = len(col_edges) - 1
    widths = [math.ceil((b - a) / tile) for a, b in itertools.pairwise(col_edges)]
    tables: dict[int, tuple[Callable[[int, int], bytes], list[tuple[int, int]]]] = {}
    rows: dict[int, tuple[int, memoryview, int]] = {}  # job -> (its row of tiles, the bytes, their offset)
    for job, segment in tiff_order(col_edges, row_edges, tile):
        if job not in tables:
            if tables and min(tables) // columns != job // columns:  # a new band: let the last go
                tables.clear()
                rows.clear()
            read = reader(job)
            tables[job] = (read, _checked(segment_spans(read), job, col_edges, row_edges, tile))
        read, spans = tables[job]
        across = widths[job % columns]
        held = rows.get(job)
        if held is None or held[0] != segment // across:
            run = spans[segment // across * across : (segment // across + 1) * across]
            start = run[0][0]
            held = rows[job] = (
                segment // across,
                memoryview(read(start, run[-1][0] + run[-1][1] - start)),
                start,
            )
        offset, length = spans[segment]
        yield held[1][offset - held[2] : offset - held[2] + length]


def _checked(
    segments: list[tuple[int, int]], job: int, col_edges: Sequence[int], row_edges: Sequence[int], tile: int
) -> list[tuple[int, int]]:
    """``segments`` if they are as many as the TIFF tiles of job tile ``job``'s cell."""
    row, col = divmod(job, len(col_edges) - 1)
    width, height = col_edges[col + 1] - col_edges[col], row_edges[row + 1] - row_edges[row]
    if len(segments) != tile_count(width, height, tile):
        raise InvalidImage(
            f"job tile {job} holds {len(segments)} TIFF tiles, its {width}x{height} cell has "
            f"{tile_count(width, height, tile)}"
        )
    return segments
