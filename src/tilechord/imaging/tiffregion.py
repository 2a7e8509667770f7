"""The TIFF side of region reads: what frame 0 of a TIFF is, parsed from its header and first IFD.

tifffile parses the file through a ``read(offset, length)`` callable, so only the header and
IFD bytes are fetched (from a file, a chunked Redis value, anything), and the result is a
plain-data :class:`TiffLayout`: the size, the Pillow mode, the tile or strip geometry, the
compression and predictor, the segments' offsets and byte counts.  The mode follows Pillow's
own mapping from the tags (``TiffImagePlugin.OPEN_INFO``) for the layouts listed in
:func:`tiff_layout`; every other TIFF is refused there, up front, with
:class:`~tilechord.errors.UnsupportedFormat`, so a split can fall back before it enqueues.
:mod:`.regions` reads the pixels of a region from a layout.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, cast

import numpy as np
import tifffile

from ..errors import InvalidImage, TilechordError, UnsupportedFormat

__all__ = ["ReadAt", "COMPRESSIONS", "ReadAtFile", "TiffLayout", "tiff_layout"]

#: ``read(offset, length)`` -> exactly those bytes of the source file.
ReadAt = Callable[[int, int], bytes]

#: The TIFF compressions read here, by tag value.
COMPRESSIONS: dict[int, str] = {
    1: "none",
    5: "lzw",
    8: "adobe_deflate",
    32946: "deflate",
    32773: "packbits",
    7: "jpeg",
}


@dataclass(frozen=True)
class TiffLayout:
    """What frame 0 of a TIFF is, as plain data: enough to fetch and decode any region of it.

    ``segment_width`` x ``segment_height`` is the tile size, or (image width, rows per
    strip) for strips; segments are numbered row by row, as ``offsets`` and ``bytecounts``.
    ``samples`` are stored per pixel, of which the first ``kept`` make the Pillow ``mode``
    (RGBX keeps 3); ``inverted`` is a min-is-white 8-bit or 1-bit image, which Pillow flips.
    A JPEG layout also has its ``photometric`` (6 is YCbCr, decoded to RGB as libtiff does
    for Pillow), the shared ``jpegtables`` and the ``sampling`` (h, v) its luma must have.
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
    photometric: int = 1
    jpegtables: bytes | None = None
    sampling: tuple[int, int] = (1, 1)

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
        caller that bounds memory checks it before choosing the region path.  (Of an
        uncompressed segment only the rows a box needs are read, whatever its size.)
        """
        return self.stride * self.segment_height


class ReadAtFile(io.RawIOBase):
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

    Reads regions of: tiled or striped, classic or BigTIFF, contiguous samples, fill order 1,
    unsigned integer samples; uncompressed, LZW, deflate (both codes) or PackBits, with or
    without the horizontal predictor, in the modes RGB, RGBA, RGB (from RGBX), L, LA, L (from
    LX), CMYK, I;16, I;16B and 1, min-is-white included where Pillow reads it; JPEG (new
    style, 8-bit) as RGB from YCbCr (any subsampling) or RGB, and as L.
    Raises :class:`UnsupportedFormat` for any other TIFF (old-style JPEG, separate planes,
    palette, float, 16-bit colour, premultiplied alpha ...), :class:`InvalidImage` for a
    damaged one.
    """
    try:
        with tifffile.TiffFile(cast("IO[bytes]", ReadAtFile(read, length))) as tif:
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
    if compression not in COMPRESSIONS:
        raise UnsupportedFormat(f"TIFF compression {compression} is not read by region")
    if page.samplesperpixel > 1 and int(page.planarconfig) != 1:
        raise UnsupportedFormat("TIFF with separate planes (PlanarConfiguration 2) is not read by region")
    if int(page.fillorder) != 1 or page.imagedepth != 1 or (page.is_subsampled and compression != 7):
        raise UnsupportedFormat("TIFF with fill order 2, depth or subsampling is not read by region")
    orientation = page.tags.get(274)
    if orientation is not None and int(orientation.value) != 1:
        # Pillow turns such a TIFF upright as it loads it; a region of the stored pixels is not that
        raise UnsupportedFormat(f"TIFF with orientation {int(orientation.value)} is not read by region")
    if compression == 7:
        mode, kept, inverted = _jpeg_mode(page)
        predictor = 1  # libtiff and tifffile ignore a predictor on JPEG
    elif predictor not in (1, 2) or (predictor == 2 and page.bitspersample not in (8, 16)):
        bits = page.bitspersample
        raise UnsupportedFormat(f"TIFF predictor {predictor} on {bits}-bit samples is not read by region")
    else:
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
        photometric=int(page.photometric),
        jpegtables=page.jpegtables if compression == 7 else None,
        sampling=_sampling(page) if compression == 7 else (1, 1),
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


def _sampling(page: tifffile.TiffPage) -> tuple[int, int]:
    """The luma sampling libtiff requires of each JPEG segment: YCbCrSubSampling for YCbCr, else 1x1."""
    if int(page.photometric) != 6:
        return (1, 1)
    horizontal, vertical = page.subsampling or (2, 2)  # the TIFF default
    return (int(horizontal), int(vertical))


def _jpeg_mode(page: tifffile.TiffPage) -> tuple[str, int, bool]:
    """The mode of a JPEG TIFF, for the three kinds shown equal to Pillow's decode.

    YCbCr (any subsampling) becomes RGB; RGB stays RGB (libtiff converts nothing, whatever
    markers the stream carries); gray is L.
    """
    photometric, samples = int(page.photometric), page.samplesperpixel
    if page.bitspersample == 8 and not page.extrasamples:
        if samples == 3 and photometric in (2, 6):
            return "RGB", 3, False
        if samples == 1 and photometric == 1:
            return "L", 1, False
    described = f"{samples}x{page.bitspersample}-bit, photometric {photometric}"
    raise UnsupportedFormat(f"JPEG TIFF of {described} is not read by region")
