"""Reading one region of a tiled or striped TIFF / BigTIFF: only the tiles or strips it touches.

Pillow decodes a compressed TIFF only whole, so a worker that needs one tile (and its halo)
of a gigapixel TIFF would hold the whole image.  Here tifffile parses the header and the
first IFD through a ``read(offset, length)`` callable (so only those bytes are fetched, from
a file, a chunked Redis value, anything), and the region is built from the segments (TIFF
tiles or strips) that it touches, each fetched, decoded with imagecodecs and dropped in turn.

The result is exactly ``Image.open(whole).crop(box)`` (mode and bytes): Pillow's own mapping
from the TIFF tags to a mode (``TiffImagePlugin.OPEN_INFO``) is followed for the layouts
listed in :func:`tiff_layout`, and every other layout is refused there, up front, with
:class:`~tilechord.errors.UnsupportedFormat`, so a split can fall back before it enqueues.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, cast

import imagecodecs
import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from ..errors import InvalidImage, TilechordError, UnsupportedFormat

__all__ = [
    "ReadAt",
    "Box",
    "TiffLayout",
    "COMPRESSIONS",
    "RUN_BYTES",
    "tiff_layout",
    "region_ranges",
    "read_region",
]

#: ``read(offset, length)`` -> exactly those bytes of the source file.
ReadAt = Callable[[int, int], bytes]
#: ``(left, upper, right, lower)``, as Pillow's ``crop`` takes it.
Box = tuple[int, int, int, int]

#: The TIFF compressions read here, by tag value: none, LZW, Adobe deflate, deflate, PackBits.
COMPRESSIONS: dict[int, str] = {1: "none", 5: "lzw", 8: "adobe_deflate", 32946: "deflate", 32773: "packbits"}

_JPEG = frozenset({6, 7, 34892, 33007})

#: The most bytes one read of back-to-back segments fetches (a single larger segment is read alone).
RUN_BYTES = 8 << 20


@dataclass(frozen=True)
class TiffLayout:
    """What frame 0 of a TIFF is, as plain data: enough to fetch and decode any region of it.

    ``segment_width`` x ``segment_height`` is the tile size, or (image width, rows per
    strip) for strips; segments are numbered row by row, as ``offsets`` and ``bytecounts``.
    ``samples`` are stored per pixel, of which the first ``kept`` make the Pillow ``mode``
    (RGBX keeps 3); ``inverted`` is a min-is-white 8-bit or 1-bit image, which Pillow flips.
    """

    width: int
    height: int
    mode: str
    tiled: bool
    segment_width: int
    segment_height: int
    compression: int
    predictor: int
    byteorder: str
    bits: int
    samples: int
    kept: int
    inverted: bool
    bigtiff: bool
    offsets: tuple[int, ...]
    bytecounts: tuple[int, ...]

    @property
    def across(self) -> int:
        """Segments per row of segments (1 for strips)."""
        return math.ceil(self.width / self.segment_width)

    @property
    def down(self) -> int:
        """Rows of segments."""
        return math.ceil(self.height / self.segment_height)

    @property
    def stride(self) -> int:
        """Bytes of one decoded row of one segment (rows of 1-bit pixels end on a byte)."""
        return (self.segment_width * self.samples * self.bits + 7) // 8

    @property
    def segment_bytes(self) -> int:
        """Bytes of one whole decoded segment: what a region read holds per segment at most.

        A striped TIFF written as one huge compressed strip makes this the whole image; a
        caller that bounds memory checks it before choosing the region path.
        """
        return self.stride * self.segment_height


class _ReadAtFile(io.RawIOBase):
    """A read-only, seekable file whose reads go to ``read``: what tifffile parses the IFD through."""

    def __init__(self, read: ReadAt, length: int) -> None:
        super().__init__()
        self._read, self._length, self._pos = read, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        count = max(0, min(len(buffer), self._length - self._pos))
        if count:
            data = self._read(self._pos, count)
            if len(data) != count:
                raise InvalidImage(f"the TIFF source gave {len(data)} bytes at {self._pos}, not {count}")
            memoryview(buffer)[:count] = data
            self._pos += count
        return count


def tiff_layout(read: ReadAt, length: int) -> TiffLayout:
    """Parse the header and first IFD of a TIFF of ``length`` bytes, reading only those bytes.

    Reads regions of: tiled or striped, classic or BigTIFF, compressed as in
    :data:`COMPRESSIONS` with or without the horizontal predictor, contiguous samples, fill
    order 1, unsigned integer samples, in the modes RGB, RGBA, RGB (from RGBX), L, LA, L
    (from LX), CMYK, I;16, I;16B and 1, min-is-white included where Pillow reads it.
    Raises :class:`UnsupportedFormat` for any other TIFF (JPEG, separate planes, palette,
    float, 16-bit colour, premultiplied alpha ...), :class:`InvalidImage` for a damaged one.
    """
    try:
        with tifffile.TiffFile(cast("IO[bytes]", _ReadAtFile(read, length))) as tif:
            page = tif.pages.first
            layout = _layout_of(page, bigtiff=tif.is_bigtiff, byteorder=tif.byteorder)
    except TilechordError:
        raise
    except Exception as exc:  # tifffile raises anything its parse trips on (TiffFileError, struct ...)
        raise InvalidImage(f"not a readable TIFF: {type(exc).__name__}: {exc}") from None
    for offset, count in zip(layout.offsets, layout.bytecounts, strict=True):
        if count <= 0 or offset < 0 or offset + count > length:
            raise InvalidImage(f"TIFF segment at {offset} of {count} bytes is outside the {length}-byte file")
    return layout


def _layout_of(page: tifffile.TiffPage, *, bigtiff: bool, byteorder: str) -> TiffLayout:
    """The layout of one parsed page, or UnsupportedFormat saying what is not read by region."""
    compression, predictor = int(page.compression), int(page.predictor)
    if compression in _JPEG:
        raise UnsupportedFormat("JPEG-compressed TIFF is not read by region (decoded whole instead)")
    if compression not in COMPRESSIONS:
        raise UnsupportedFormat(f"TIFF compression {compression} is not read by region")
    if predictor not in (1, 2) or (predictor == 2 and page.bitspersample not in (8, 16)):
        bits = page.bitspersample
        raise UnsupportedFormat(f"TIFF predictor {predictor} on {bits}-bit samples is not read by region")
    if page.samplesperpixel > 1 and int(page.planarconfig) != 1:
        raise UnsupportedFormat("TIFF with separate planes (PlanarConfiguration 2) is not read by region")
    if int(page.fillorder) != 1 or page.imagedepth != 1 or page.is_subsampled:
        raise UnsupportedFormat("TIFF with fill order 2, depth or subsampling is not read by region")
    mode, kept, inverted = _pillow_mode(page, byteorder)
    if page.is_tiled:
        segment = (page.tilewidth, page.tilelength)
    else:
        segment = (page.imagewidth, max(1, min(page.rowsperstrip or page.imagelength, page.imagelength)))
    layout = TiffLayout(
        width=page.imagewidth,
        height=page.imagelength,
        mode=mode,
        tiled=page.is_tiled,
        segment_width=segment[0],
        segment_height=segment[1],
        compression=compression,
        predictor=predictor,
        byteorder=byteorder,
        bits=page.bitspersample,
        samples=page.samplesperpixel,
        kept=kept,
        inverted=inverted,
        bigtiff=bigtiff,
        offsets=tuple(int(v) for v in page.dataoffsets),
        bytecounts=tuple(int(v) for v in page.databytecounts),
    )
    if min(layout.width, layout.height, *segment) <= 0 or len(layout.offsets) != layout.across * layout.down:
        raise InvalidImage(f"TIFF of {layout.width}x{layout.height} has {len(layout.offsets)} segments")
    return layout


def _pillow_mode(page: tifffile.TiffPage, byteorder: str) -> tuple[str, int, bool]:
    """(mode, samples kept, inverted) as Pillow's OPEN_INFO maps these tags, for the layouts read here."""
    photometric, bits, samples = int(page.photometric), page.bitspersample, page.samplesperpixel
    extra = tuple(int(v) for v in page.extrasamples)
    formats = set(np.atleast_1d(page.sampleformat).tolist())
    described = f"{samples}x{bits}-bit, photometric {photometric}, extra samples {extra}"
    if formats != {1}:
        raise UnsupportedFormat(f"TIFF sample format {sorted(formats)} ({described}) is not read by region")
    key = (photometric, bits, samples, extra)
    table: dict[tuple[int, int, int, tuple[int, ...]], tuple[str, int, bool]] = {
        (2, 8, 3, ()): ("RGB", 3, False),
        (2, 8, 4, ()): ("RGBA", 4, False),
        (2, 8, 4, (2,)): ("RGBA", 4, False),
        (2, 8, 4, (999,)): ("RGBA", 4, False),
        (2, 8, 4, (0,)): ("RGB", 3, False),
        (5, 8, 4, ()): ("CMYK", 4, False),
        (1, 8, 1, ()): ("L", 1, False),
        (0, 8, 1, ()): ("L", 1, True),
        (1, 8, 2, (2,)): ("LA", 2, False),
        (1, 8, 2, (0,)): ("L", 1, False),
        (1, 1, 1, ()): ("1", 1, False),
        (0, 1, 1, ()): ("1", 1, True),
        (1, 16, 1, ()): ("I;16" if byteorder == "<" else "I;16B", 1, False),
    }
    if key == (0, 16, 1, ()) and byteorder == "<":
        return "I;16", 1, False  # Pillow reads little-endian min-is-white 16-bit as is, not inverted
    if key not in table:
        raise UnsupportedFormat(f"TIFF of {described} is not read by region")
    return table[key]


def _span(layout: TiffLayout, box: Box) -> tuple[int, int, int, int]:
    """The box clipped to the image (may be empty); Pillow's crop fills the rest with zeros."""
    left, upper, right, lower = box
    if right < left or lower < upper:
        raise ValueError(f"box {box} has its right below its left or its lower above its upper")
    return max(left, 0), max(upper, 0), min(right, layout.width), min(lower, layout.height)


def _touched(layout: TiffLayout, box: Box) -> Iterator[int]:
    """The indices of the segments that the box touches, in file-index order."""
    x0, y0, x1, y1 = _span(layout, box)
    if x0 >= x1 or y0 >= y1:
        return
    width, height = layout.segment_width, layout.segment_height
    for row in range(y0 // height, (y1 - 1) // height + 1):
        for col in range(x0 // width, (x1 - 1) // width + 1):
            yield row * layout.across + col


@dataclass(frozen=True)
class _Piece:
    """The bytes of one segment to fetch: all of it, or (uncompressed) only the rows the box needs."""

    index: int
    first: int  # the segment row the bytes start at
    rows: int
    offset: int
    length: int


def _pieces(layout: TiffLayout, box: Box) -> Iterator[_Piece]:
    """What to fetch for the box, segment by segment, in file-index order."""
    upper, lower = _span(layout, box)[1::2]
    for index in _touched(layout, box):
        top = layout.segment_height * (index // layout.across)
        rows = layout.segment_height if layout.tiled else min(layout.segment_height, layout.height - top)
        offset, length = layout.offsets[index], layout.bytecounts[index]
        if layout.compression != 1:
            yield _Piece(index, 0, rows, offset, length)
            continue
        first, last = max(upper - top, 0), min(lower - top, rows)
        start, stop = first * layout.stride, last * layout.stride
        if stop > length:
            raise InvalidImage(f"uncompressed TIFF segment {index} has {length} bytes, rows need {stop}")
        yield _Piece(index, first, last - first, offset + start, stop - start)


def region_ranges(layout: TiffLayout, box: Box) -> list[tuple[int, int]]:
    """The byte ranges ``(offset, length)`` of the tiles or strips that ``box`` touches.

    For an uncompressed TIFF, only the rows of each segment that the box needs.
    """
    return [(piece.offset, piece.length) for piece in _pieces(layout, box)]


def _runs(pieces: Iterator[_Piece]) -> Iterator[list[_Piece]]:
    """Groups of pieces that lie back to back in the file, each one read of at most RUN_BYTES."""
    run: list[_Piece] = []
    for piece in pieces:
        end = run[-1].offset + run[-1].length if run else -1
        if run and (end != piece.offset or end + piece.length - run[0].offset > RUN_BYTES):
            yield run
            run = []
        run.append(piece)
    if run:
        yield run


def _decode(layout: TiffLayout, piece: _Piece, data: memoryview) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """One piece's pixels, (rows, width, kept samples), in Pillow's values (1-bit: 0 or 1)."""
    width, samples, rows = layout.segment_width, layout.samples, piece.rows
    size = rows * layout.stride
    raw = _decompress(layout, data, size)
    if len(raw) < size:
        raise InvalidImage(f"TIFF segment {piece.index} decodes to {len(raw)} bytes, not {size}")
    pixels: NDArray[np.uint8] | NDArray[np.uint16]
    if layout.bits == 1:
        packed = np.frombuffer(raw, np.uint8, size).reshape(rows, layout.stride)
        pixels = np.unpackbits(packed, axis=1)[:, :width].reshape(rows, width, 1)
        return pixels ^ np.uint8(layout.inverted)
    dtype = np.dtype(np.uint8) if layout.bits == 8 else np.dtype(f"{layout.byteorder}u2")
    pixels = np.frombuffer(raw, dtype, rows * width * samples).reshape(rows, width, samples)
    if layout.predictor == 2:  # sums along each row; imagecodecs keeps the file's byte order
        pixels = imagecodecs.delta_decode(pixels, axis=-2)
    if layout.inverted:
        pixels = np.uint8(255) - pixels
    return pixels[:, :, : layout.kept]


def _decompress(layout: TiffLayout, data: memoryview, size: int) -> memoryview | bytes | bytearray:
    """The segment's bytes uncompressed; a codec's failure is a damaged file."""
    if layout.compression == 1:
        return data
    buffer = cast(bytes, data)  # imagecodecs reads any buffer; its stubs name only bytes-likes
    try:
        if layout.compression == 5:
            return imagecodecs.lzw_decode(buffer, out=size)
        if layout.compression in (8, 32946):
            return imagecodecs.deflate_decode(buffer, out=size)
        return imagecodecs.packbits_decode(buffer, out=size)
    except Exception as exc:  # imagecodecs raises its own per-codec error classes
        name = COMPRESSIONS[layout.compression]
        raise InvalidImage(f"TIFF segment does not decode ({name}): {exc}") from None


def read_region(read: ReadAt, layout: TiffLayout, box: Box) -> Image.Image:
    """The pixels of ``box`` as ``Image.open(whole).crop(box)`` gives them, fetching only its segments.

    Outside the image, as Pillow's crop, zeros.  Holds the region and one run of back-to-back
    segments (at most :data:`RUN_BYTES`, or one segment) at a time, never the whole image.
    """
    span = _span(layout, box)
    left, upper, right, lower = box
    dtype = np.uint16 if layout.bits == 16 else np.uint8
    region = np.zeros((lower - upper, right - left, layout.kept), dtype)
    for run in _runs(_pieces(layout, box)):
        start = run[0].offset
        blob = read(start, run[-1].offset + run[-1].length - start)
        if len(blob) != run[-1].offset + run[-1].length - start:
            raise InvalidImage(f"the TIFF source gave {len(blob)} bytes at {start}, not the range asked")
        view = memoryview(blob)  # each segment a view of the one read, not a copy
        for piece in run:
            pixels = _decode(layout, piece, view[piece.offset - start : piece.offset - start + piece.length])
            _paste(layout, piece, pixels, region, span, (left, upper))
        del view, blob
    return _image(layout, region)


def _paste(
    layout: TiffLayout,
    piece: _Piece,
    pixels: NDArray[np.uint8] | NDArray[np.uint16],
    region: NDArray[np.uint8] | NDArray[np.uint16],
    span: Box,
    origin: tuple[int, int],
) -> None:
    """Copy the part of one decoded piece that lies in the span into the region array."""
    sx = (piece.index % layout.across) * layout.segment_width
    sy = (piece.index // layout.across) * layout.segment_height + piece.first
    x0, y0 = max(span[0], sx), max(span[1], sy)
    x1 = min(span[2], sx + layout.segment_width)
    y1 = min(span[3], sy + pixels.shape[0])
    region[y0 - origin[1] : y1 - origin[1], x0 - origin[0] : x1 - origin[0]] = pixels[
        y0 - sy : y1 - sy, x0 - sx : x1 - sx
    ]


def _image(layout: TiffLayout, region: NDArray[np.uint8] | NDArray[np.uint16]) -> Image.Image:
    """The Pillow image of the region array, in the layout's mode and Pillow's byte order."""
    height, width = region.shape[:2]
    size = (width, height)
    if layout.mode == "1":
        return Image.frombytes("1", size, np.packbits(region[:, :, 0], axis=1).tobytes())
    if layout.bits == 16:
        order = "<" if layout.mode == "I;16" else ">"
        return Image.frombytes(layout.mode, size, region.astype(f"{order}u2").tobytes())
    return Image.frombytes(layout.mode, size, region.tobytes())
