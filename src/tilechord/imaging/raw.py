"""tilechord's raw pixel format: how an image travels between tasks.

A short json header (mode, size, palette, transparency, and the caller's ``extra``) and
Pillow's own pixel bytes.  Nothing is re-encoded on the way, so nothing is lost, and a
tile costs one ``tobytes`` and one ``frombytes``.  Only the source (as the user gave it)
and the result (in the format asked for) are encoded files; see :mod:`.decode` and
:mod:`.encode`.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from PIL import Image

from ..errors import InvalidImage

__all__ = [
    "RAW_MAGIC",
    "Data",
    "RawLayout",
    "is_raw",
    "join_strips",
    "pack_raw",
    "RAW_HEAD",
    "raw_layout",
    "unpack_raw",
]

RAW_MAGIC = b"TCRAW1\n"
#: What the decoders take: bytes, or a view of a buffer read straight from Redis.
Data: TypeAlias = "bytes | bytearray | memoryview"
_LEN = struct.Struct(">I")


def is_raw(data: Data) -> bool:
    """Whether *data* is a raw blob rather than an encoded file: the magic says so."""
    return bytes(data[: len(RAW_MAGIC)]) == RAW_MAGIC


def _json_safe(value: Any) -> Any:
    """A transparency value as json can hold it: bytes as base64, tuples as lists."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return list(value)
    return value


def _from_json_safe(value: Any) -> Any:
    """The inverse of :func:`_json_safe`, so Pillow gets back the very type it gave."""
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return tuple(value)
    return value


def pack_raw(image: Image.Image, extra: Mapping[str, Any] | None = None) -> bytes:
    """Serialise an image losslessly: mode, size, palette, transparency and pixels."""
    header: dict[str, Any] = {"mode": image.mode, "size": list(image.size)}
    if image.mode in ("P", "PA") and image.palette is not None:
        pmode = image.palette.mode
        header["palette"] = [pmode, base64.b64encode(bytes(image.getpalette(pmode) or [])).decode("ascii")]
    if "transparency" in image.info:
        header["transparency"] = _json_safe(image.info["transparency"])
    if extra:
        header["extra"] = dict(extra)
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((RAW_MAGIC, _LEN.pack(len(head)), head, image.tobytes()))


def _raw_header(data: Data) -> tuple[dict[str, Any], int]:
    """A raw blob's header, and where its pixels start."""
    if not is_raw(data):
        raise InvalidImage("not a tilechord raw image")
    offset = len(RAW_MAGIC)
    (hlen,) = _LEN.unpack_from(data, offset)
    offset += _LEN.size
    header: dict[str, Any] = json.loads(bytes(data[offset : offset + hlen]))
    return header, offset + hlen


def _image_from(header: Mapping[str, Any], pixels: Data) -> Image.Image:
    """The image a header and its pixel bytes describe, sharing those bytes' memory."""
    mode, size = header["mode"], tuple(header["size"])
    # frombuffer shares *pixels*' memory where it can (no copy of a tile's pixels) and marks
    # the image read-only; Pillow copies such an image before anything writes to it.
    image = Image.frombuffer(mode, size, pixels, "raw", mode, 0, 1)  # type: ignore[arg-type]
    if "palette" in header:
        pmode, pal = header["palette"]
        image.putpalette(base64.b64decode(pal), pmode)
    if "transparency" in header:
        image.info["transparency"] = _from_json_safe(header["transparency"])
    return image


@dataclass(frozen=True)
class RawLayout:
    """Where a raw blob's rows are: enough to read any box of it by byte ranges."""

    header: dict[str, Any]
    start: int  # where the pixels start
    stride: int  # bytes of one row

    @property
    def size(self) -> tuple[int, int]:
        return int(self.header["size"][0]), int(self.header["size"][1])

    def crop(self, read: Callable[[int, int], bytes], box: tuple[int, int, int, int]) -> Image.Image:
        """``unpack_raw(blob)[0].crop(box)``, reading only the rows of *box* (*box* inside the image)."""
        left, upper, right, lower = box
        rows = read(self.start + upper * self.stride, (lower - upper) * self.stride)
        band = _image_from({**self.header, "size": [self.size[0], lower - upper]}, rows)
        return band.crop((left, 0, right, lower - upper))


def raw_layout(head: Data) -> RawLayout:
    """The layout of a raw blob from its first bytes (:data:`RAW_HEAD` of them hold any header)."""
    header, start = _raw_header(head)
    width = int(header["size"][0])
    return RawLayout(header, start, _row_bytes(header["mode"], width))


def _row_bytes(mode: str, width: int) -> int:
    """Bytes of one row of Pillow's raw pixels in *mode* (a 1-bit row ends on a byte)."""
    return len(Image.new(mode, (width, 1)).tobytes())


#: Bytes from a raw blob's start that hold its header (a palette is the longest part: 1 KB).
RAW_HEAD = 64 * 1024


def unpack_raw(data: Data) -> tuple[Image.Image, dict[str, Any]]:
    """The inverse of :func:`pack_raw`; returns the image and the ``extra`` mapping."""
    header, offset = _raw_header(data)
    return _image_from(header, memoryview(data)[offset:]), dict(header.get("extra") or {})


class StripJoiner:
    """Full-width strips, added top to bottom, as one image: each strip's pixels copied into
    one buffer of the whole image's size as it comes, so the strips are read one at a time.

    Raw pixels are stored row after row, so strips that span the width and follow each other
    down the image are the whole image's bytes once put one after the other: one copy, where
    a canvas costs a fill, a decode per strip and a paste.  :meth:`add` refuses a strip that
    does not continue the image (not full width, not next, another mode or palette), and
    the caller pastes instead; each blob's ``extra`` must hold its ``box`` on the output.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self._first: dict[str, Any] | None = None
        self._pixels = bytearray()
        self._stride = 0
        self._y = 0

    def add(self, blob: Data) -> bool:
        """Append the next strip; ``False`` (nothing added) if it does not continue the image."""
        header, start = _raw_header(blob)
        meta = {k: v for k, v in header.items() if k not in ("size", "extra")}
        x0, y0 = header["extra"]["box"][:2]
        width, height = header["size"]
        if self._first is None:
            self._first = meta
            self._stride = _row_bytes(meta["mode"], self.size[0])
            self._pixels = bytearray(self._stride * self.size[1])
        pixels = memoryview(blob)[start:]
        if (x0, y0, width) != (0, self._y, self.size[0]) or meta != self._first:
            return False
        if self._y + height > self.size[1] or len(pixels) != self._stride * height:
            return False
        self._pixels[self._y * self._stride : (self._y + height) * self._stride] = pixels
        self._y += height
        return True

    def image(self) -> Image.Image | None:
        """The joined image, or ``None`` if the strips added do not reach its bottom."""
        if self._first is None or self._y != self.size[1]:
            return None
        return _image_from({**self._first, "size": list(self.size)}, self._pixels)


def join_strips(blobs: list[Data], size: tuple[int, int]) -> Image.Image | None:
    """Full-width strips in any order joined into the whole image (see :class:`StripJoiner`);
    ``None`` when the pieces are not such strips (columns, a grid, different modes or palettes)."""
    joiner = StripJoiner(size)
    order = sorted(blobs, key=lambda blob: int(_raw_header(blob)[0]["extra"]["box"][1]))
    return joiner.image() if all(joiner.add(blob) for blob in order) else None
