"""Reading one region of a tiled or striped TIFF / BigTIFF: only the tiles or strips it touches.

Pillow decodes a compressed TIFF only whole, so a worker that needs one tile (and its halo)
of a gigapixel TIFF would hold the whole image.  From a :class:`~.tiffregion.TiffLayout`
(parsed by :func:`~.tiffregion.tiff_layout` from the header and IFD alone), the region is
built from the segments (TIFF tiles or strips) that it touches, each fetched through
``read(offset, length)``, decoded with imagecodecs and dropped in turn.  The result is
exactly ``Image.open(whole).crop(box)``, mode and bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import imagecodecs
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from ..errors import InvalidImage
from .tiffregion import COMPRESSIONS, ReadAt, ReadAtFile, TiffLayout, tiff_layout

__all__ = [
    "ReadAt",
    "ReadAtFile",
    "Box",
    "TiffLayout",
    "COMPRESSIONS",
    "RUN_BYTES",
    "tiff_layout",
    "region_ranges",
    "read_region",
]

#: ``(left, upper, right, lower)``, as Pillow's ``crop`` takes it.
Box = tuple[int, int, int, int]

#: The most bytes one read of back-to-back segments fetches (a single larger segment is read alone).
RUN_BYTES = 8 << 20


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
    if layout.compression == 7:
        return _decode_jpeg(layout, piece, data)
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


def _decode_jpeg(layout: TiffLayout, piece: _Piece, data: memoryview) -> NDArray[np.uint8]:
    """One JPEG segment's pixels, converted as libtiff converts them for Pillow."""
    height, width = _check_jpeg_frame(layout, piece, data)
    cs = imagecodecs.JPEG8.CS
    # libtiff converts YCbCr to RGB and leaves the rest as stored, whatever the stream's markers say
    colorspace = {6: cs.YCbCr, 2: cs.RGB}.get(layout.photometric, cs.GRAYSCALE)
    outcolorspace = cs.GRAYSCALE if layout.photometric == 1 else cs.RGB
    try:
        pixels = imagecodecs.jpeg_decode(
            cast(bytes, data),
            tables=layout.jpegtables,
            colorspace=colorspace,
            outcolorspace=outcolorspace,
            shape=(height or piece.rows, width or layout.segment_width),
        )
    except Exception as exc:  # imagecodecs.JpegError and the like
        raise InvalidImage(f"TIFF segment {piece.index} does not decode (jpeg): {exc}") from None
    pixels = pixels.reshape(pixels.shape[0], pixels.shape[1], -1)
    top = (piece.index // layout.across) * layout.segment_height
    left = (piece.index % layout.across) * layout.segment_width
    needed = (
        min(piece.rows, layout.height - top),
        min(layout.segment_width, layout.width - left),
        layout.kept,
    )
    if pixels.dtype != np.uint8 or any(have < need for have, need in zip(pixels.shape, needed, strict=True)):
        raise InvalidImage(f"TIFF segment {piece.index} decodes to {pixels.shape}, not {needed}")
    return pixels[:, :, : layout.kept]


def _check_jpeg_frame(layout: TiffLayout, piece: _Piece, head: memoryview) -> tuple[int, int]:
    """The (height, width) of a segment's JPEG frame, refused where libtiff (so Pillow) refuses it.

    imagecodecs decodes a frame of other components, sampling or size anyway, so without this
    check tilechord would give pixels where Pillow gives an error.  As libtiff, a last strip
    whose frame still has the full rows per strip is taken (and its extra rows dropped).
    """
    frame = _jpeg_frame(head)
    if frame is None:
        raise InvalidImage(f"TIFF segment {piece.index} has no JPEG frame header")
    precision, height, width, factors = frame
    expected = [layout.sampling] + [(1, 1)] * (layout.samples - 1)
    if precision != 8 or len(factors) != layout.samples or factors != expected:
        raise InvalidImage(
            f"TIFF segment {piece.index} is a {precision}-bit JPEG sampled {factors}, not {expected}"
        )
    if width > layout.segment_width or height > layout.segment_height:
        raise InvalidImage(f"TIFF segment {piece.index} is a {width}x{height} JPEG, over its segment")
    return height, width


def _jpeg_frame(head: memoryview) -> tuple[int, int, int, list[tuple[int, int]]] | None:
    """(precision, height, width, each component's (h, v) sampling) from a JPEG's SOF marker."""
    at = 2
    while at + 4 <= len(head) and head[at] == 0xFF:
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(head[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            body = head[at + 4 : at + 2 + length]
            if len(body) < 6 or len(body) < 6 + 3 * body[5]:
                return None
            sampling = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(body[5])]
            return body[0], int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), sampling
        at += 2 + length
    return None


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
    x1 = min(span[2], sx + pixels.shape[1])
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
