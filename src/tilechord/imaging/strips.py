"""A PNG decoded strip by strip from the top, never whole (issue #16): what the split streams.

Why not Pillow's own decoder: it writes into one target image and cannot be moved to the
next strip mid-stream (``setimage`` again would leak its scanline buffer and reallocate it
one byte short of what the PNG decoder writes), and a fresh decoder starts from the top.

So this module inflates the IDAT stream itself (Python's zlib, output bounded per call),
and gives each strip's filtered scanlines, re-deflated as stored blocks, to a fresh Pillow
PNG ("zip") decoder, after one *seed* scanline: the row above the strip, already
unfiltered, marked with filter type 0.  The decoder's "previous row" is then exactly what
one pass from the top would have had, so its unfiltering is Pillow's, byte for byte.  It
decodes into a byte-keeping mode of the same bytes per pixel (the filters' only
parameter), whose bytes are the raw scanlines; Pillow's raw decoder then unpacks them with
the file's own rawmode, the very unpacker the PNG decoder calls per row.  Palette and info
come from the header opened once, loaded for one row (which reads the chunks after the
image data, as a full load does).

Memory: a few buffers of one strip (the byte-keeping image, its raw bytes, the strip) and
zlib's state, whatever the image's height.  A zlib stream that ends before the last
row is damage here (:class:`InvalidImage`; Pillow leaves such rows black when the
stream's end arrives with the last row's data, and calls the file truncated otherwise).
Interlaced (Adam7) files and JPEG do not stream: :class:`NotStreamable` says so before
any strip, and the caller keeps the whole-image path.  JPEG: Pillow's libjpeg decoder
cannot be continued into a new target either, and a restart decodes every row above
again, since the entropy-coded data chains DC values from the top; another JPEG decoder's
output would need its own proof of equality with Pillow's.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageFile, PngImagePlugin
from PIL import _imaging as core

from ..errors import InvalidImage, InvalidParameter, TilechordError
from .decode import DECODE_ERRORS, open_checked
from .raw import Data

__all__ = ["NotStreamable", "can_stream", "iter_strips"]

# Bits per pixel of each rawmode Pillow gives a non-interlaced PNG (PngImagePlugin._MODES).
_BITS = {
    "1": 1, "L;2": 2, "L;4": 4, "L": 8, "I;16B": 16, "RGB": 24, "RGB;16B": 48,
    "P;1": 1, "P;2": 2, "P;4": 4, "P": 8, "LA": 16, "LA;16B": 32, "RGBA": 32, "RGBA;16B": 64,
}  # fmt: skip

# For each byte count per pixel (the filters' distance to the left neighbour): a mode and
# rawmodes whose unpacked pixels keep every scanline byte.  Six and eight bytes take two
# decodes (the high bytes of each 16-bit sample, then the low ones, read as little-endian).
_KEEPING = {
    1: ("L", ("L",)),
    2: ("I;16", ("I;16",)),
    3: ("RGB", ("RGB",)),
    4: ("RGBA", ("RGBA",)),
    6: ("RGB", ("RGB;16B", "RGB;16L")),
    8: ("RGBA", ("RGBA;16B", "RGBA;16L")),
}

_PIECE = 1 << 20  # inflated bytes asked of zlib per call: bounds a decompression bomb
_READ = 65536  # compressed bytes read per call, as ImageFile.load reads them (MAXBLOCK)


class NotStreamable(Exception):
    """This input cannot be decoded strip by strip: keep the whole-image path for it.

    A signal between tilechord's own modules, raised before any strip, never to users.
    """


@dataclass(frozen=True)
class _Layout:
    """How the scanlines of one PNG are laid out, and how to unfilter and unpack them."""

    mode: str
    rawmode: str
    width: int
    height: int
    row_bytes: int  # without the filter byte
    bpp: int  # bytes per complete pixel, at least 1

    @property
    def keeping_width(self) -> int:
        """The width of the byte-keeping image one scanline fills."""
        return self.row_bytes // self.bpp


def _layout(image: Image.Image) -> _Layout:
    """The scanline layout of an opened PNG, or :class:`NotStreamable` with the reason."""
    if image.format != "PNG":
        raise NotStreamable(f"{image.format} does not stream; only PNG does")
    if image.info.get("interlace"):
        raise NotStreamable("an interlaced (Adam7) PNG does not stream: its passes cover the whole image")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise NotStreamable("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: Pillow fills what it cannot read")
    width, height = image.size
    tiles = getattr(image, "tile", [])
    if len(tiles) != 1 or tiles[0][0] != "zip" or tuple(tiles[0][1]) != (0, 0, width, height):
        raise NotStreamable("the PNG's image data does not cover the whole image in one piece")
    rawmode = tiles[0][3]
    if not isinstance(rawmode, str) or rawmode not in _BITS:
        raise NotStreamable(f"the PNG's raw mode {rawmode!r} has no known layout")
    bits = _BITS[rawmode]
    return _Layout(image.mode, rawmode, width, height, (bits * width + 7) // 8, (bits + 7) // 8)


def can_stream(data: Data) -> bool:
    """Whether :func:`iter_strips` can stream *data*: from the header alone, no limit applied."""
    if bytes(data[:8]) != PngImagePlugin._MAGIC:
        return False
    try:
        _layout(open_checked(data, sys.maxsize))
    except (TilechordError, NotStreamable):
        return False
    return True


def iter_strips(data: Data, rows: int, max_pixels: int) -> Iterator[Image.Image]:
    """Frame 0 of a PNG as consecutive full-width strips of *rows* rows, top to bottom.

    Each strip equals ``Image.open(BytesIO(data)).crop((0, y, w, min(y + rows, h)))``:
    pixels, mode, palette and info.  The header is read and checked (*max_pixels*, and
    whether it streams: :class:`NotStreamable`) when this is called, before any pixel is
    decoded; damage found further down the file raises :class:`InvalidImage` from the
    iterator, possibly after some strips were yielded.
    """
    if rows < 1:
        raise InvalidParameter(f"a strip needs at least one row, not {rows}")
    template = open_checked(data, max_pixels)
    layout = _layout(template)
    _load_first_row(template, layout)
    source = _Scanlines(_image_data(data, max_pixels, layout))
    return _strips(template, layout, source, rows)


def _load_first_row(image: Image.Image, layout: _Layout) -> None:
    """Load the opened header for its first row only: the mode, palette and full info of a load.

    Loading reads the chunks after the image data (text, EXIF) into ``info`` and realises
    the palette, as a full load does; one row keeps it cheap.  A damaged header or tail
    is refused here, before any strip.
    """
    assert isinstance(image, ImageFile.ImageFile)
    image._size = (layout.width, 1)
    image.tile = [image.tile[0]._replace(extents=(0, 0, layout.width, 1))]
    try:
        image.load()
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"the PNG image is damaged: {exc}") from None


def _image_data(data: Data, max_pixels: int, layout: _Layout) -> Iterator[bytes]:
    """The compressed image data of frame 0, read as Pillow's load reads it.

    Pillow's own ``load_read`` walks the IDAT (and fdAT) chunks, with its checks of chunk
    names and sequence numbers; its ``load_prepare`` is asked for one row of memory only.
    """
    image = open_checked(data, max_pixels)
    assert isinstance(image, PngImagePlugin.PngImageFile) and image.fp is not None
    offset = image.tile[0][2]
    image._size = (layout.width, 1)
    try:
        image.load_prepare()
        image.fp.seek(offset)
        while chunk := image.load_read(_READ):
            yield chunk
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"the PNG image is damaged or truncated: {exc}") from None


class _Scanlines:
    """The inflated image data, handed out as pieces of at most :data:`_PIECE` bytes."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._inflate = zlib.decompressobj()
        self._tail = b""
        self._exhausted = False

    def take(self, size: int) -> Iterator[bytes]:
        """Exactly *size* inflated bytes, as pieces: a stream that ends first is damage."""
        while size > 0:
            if self._inflate.eof:
                raise InvalidImage("the PNG image is damaged: its zlib stream ends before the last row")
            if not self._tail and not self._exhausted:
                self._tail = next(self._chunks, b"")
                self._exhausted = not self._tail
            try:
                piece = self._inflate.decompress(self._tail, min(size, _PIECE))
            except zlib.error as exc:
                raise InvalidImage(f"the PNG image data is corrupt: {exc}") from None
            self._tail = self._inflate.unconsumed_tail
            if piece:
                size -= len(piece)
                yield piece
            elif self._exhausted and not self._tail and not self._inflate.eof:
                raise InvalidImage("the PNG image is truncated: its image data ends before the last row")


def _strips(template: Image.Image, layout: _Layout, source: _Scanlines, rows: int) -> Iterator[Image.Image]:
    """Decode strip after strip, each seeded with the unfiltered row above it."""
    seed = b""
    for top in range(0, layout.height, rows):
        count = min(rows, layout.height - top)
        raw = _unfilter(source, layout, seed, count)
        seed = bytes(raw[-layout.row_bytes :])
        strip = _strip(template, layout, raw, count)
        del raw
        yield strip


def _unfilter(source: _Scanlines, layout: _Layout, seed: bytes, count: int) -> bytearray:
    """The raw (unfiltered) scanlines of the next *count* rows.

    Pillow's PNG decoder does the unfiltering, on a stored-deflate copy of the rows after
    the seed row; its target keeps every byte, and the seed row is left out of the result.
    """
    mode, rawmodes = _KEEPING[layout.bpp]
    seeded = 1 if seed else 0
    size = (layout.keeping_width, count + seeded)
    targets = [core.new(mode, size) for _ in rawmodes]
    decoders = [Image._getdecoder(mode, "zip", rawmode) for rawmode in rawmodes]
    for decoder, target in zip(decoders, targets, strict=True):
        decoder.setimage(target, (0, 0, *size))
    feeder = _Feeder(decoders)
    deflate = zlib.compressobj(0)
    try:
        if seed:
            feeder.feed(deflate.compress(b"\0" + seed))
        for piece in source.take(count * (layout.row_bytes + 1)):
            feeder.feed(deflate.compress(piece))
        feeder.feed(deflate.flush())
    finally:
        feeder.cleanup()
    if not feeder.done:
        raise InvalidImage("cannot unfilter the PNG's rows: Pillow's decoder wanted more of them")
    return _raw_bytes(targets, mode, (0, seeded, layout.keeping_width, seeded + count))


class _Feeder:
    """Pillow decoders fed the same stream, each until it says it has every row."""

    def __init__(self, decoders: list[core.ImagingDecoder | ImageFile.PyDecoder]) -> None:
        self._decoders = decoders
        self.done = False

    def feed(self, buffer: bytes) -> None:
        """Give *buffer* to every decoder; a decoder that has finished is never called again."""
        if not buffer or self.done:
            return
        for decoder in self._decoders:
            status, error = decoder.decode(buffer)
            if error:
                raise InvalidImage(f"the PNG image data is corrupt (Pillow's decoder error {error})")
            if status < 0:
                self.done = True

    def cleanup(self) -> None:
        """Free the decoders' zlib state, whether or not they finished."""
        for decoder in self._decoders:
            decoder.cleanup()


def _raw_bytes(targets: list[core.ImagingCore], mode: str, box: tuple[int, int, int, int]) -> bytearray:
    """The bytes of *box* of the byte-keeping targets, interleaved for 16-bit samples."""
    parts = [_packed(target, mode, box) for target in targets]
    targets.clear()
    if len(parts) == 1:
        return parts[0]
    high, low = parts
    raw = bytearray(2 * len(high))
    raw[0::2] = high
    raw[1::2] = low
    return raw


def _packed(target: core.ImagingCore, mode: str, box: tuple[int, int, int, int]) -> bytearray:
    """``tobytes`` of one box of a core image, written into one buffer (no list, no join)."""
    width, height = box[2] - box[0], box[3] - box[1]
    if height <= 0:
        return bytearray()
    encoder = Image._getencoder(mode, "raw", mode)
    encoder.setimage(target, box)
    out = bytearray()
    bufsize = max(65536, width * 4)
    while True:
        _, status, chunk = encoder.encode(bufsize)
        out += chunk
        if status:
            break
    if status < 0:
        raise InvalidImage(f"cannot read back the unfiltered rows (Pillow's encoder error {status})")
    return out


def _strip(template: Image.Image, layout: _Layout, raw: bytearray, count: int) -> Image.Image:
    """A strip of *count* rows from its raw scanlines, as Pillow's PNG decoder unpacks them.

    The same unpacker (the file's rawmode) into the same zero-filled target; the palette
    and info are the loaded header's.
    """
    target = core.new(layout.mode, (layout.width, count))
    decoder = Image._getdecoder(layout.mode, "raw", (layout.rawmode, 0, 1))
    decoder.setimage(target, (0, 0, layout.width, count))
    status, error = decoder.decode(raw)
    if status >= 0 or error:
        raise InvalidImage(f"cannot unpack the PNG's rows (Pillow's raw decoder error {error})")
    if layout.mode == "P":
        palette_mode = template.im.getpalettemode()
        target.putpalette(palette_mode, palette_mode, template.im.getpalette(palette_mode, palette_mode))
    return template._new(target)
