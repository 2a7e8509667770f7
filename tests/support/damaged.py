"""Small image files made with Pillow, and the damage hypothesis does to them (issue #18 items 11-14).

A file of every kind tilechord reads and writes (:data:`CORPUS`; the PSD by hand, since
Pillow cannot write one), helpers that rewrite a GIF's or TIFF's declared frame sizes,
and :class:`Mutation`: bit flips, bytes set, truncations, PNG chunks or JPEG segments
swapped, repeated or dropped, huge declared sizes.  No Redis, no processes.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from hypothesis import strategies as st
from PIL import Image

# ------------------------------------------------------------------------- the files


def saved(frames: list[Image.Image], fmt: str, **options: object) -> bytes:
    """*frames* written as one *fmt* file (every frame, with ``save_all``, where there are several)."""
    buffer = io.BytesIO()
    extra = {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    frames[0].save(buffer, fmt, **extra, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def gradients(size: tuple[int, int], blue: int) -> Image.Image:
    """A linear and a radial gradient and a flat *blue*: no noise, so every process makes the same."""
    return Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.new("L", size, blue),
        ),
    )


def picture(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Gradients and a bar, different for each seed: enough for every codec to keep."""
    w, h = size
    rgb = gradients(size, (40 * seed) % 256)
    rgb.paste((255, 255 - 50 * seed % 256, 0), (seed % w, 0, min(w, seed % w + 3), h))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return rgb.convert(mode)


def psd(width: int = 8, height: int = 6, layer_box: tuple[int, int, int, int] = (1, 2, 4, 7)) -> bytes:
    """A small RGB Photoshop file with two layers (raw channels), boxes as top, left, bottom, right."""
    be = struct.pack
    header = b"8BPS" + be(">H", 1) + b"\0" * 6 + be(">HIIHH", 3, height, width, 8, 3)
    records, channels = b"", b""
    for (top, left, bottom, right), value in (((0, 0, height, width), 40), (layer_box, 200)):
        size = max(0, (bottom - top) * (right - left))
        records += be(">iiiiH", top, left, bottom, right, 3)
        for cid in range(3):
            records += be(">hI", cid, 2 + size)
            channels += be(">H", 0) + bytes((value + 30 * cid) % 256 for _ in range(size))
        extra = be(">II", 0, 0) + b"\x03abc"
        records += b"8BIMnorm" + bytes((255, 0, 0, 0)) + be(">I", len(extra)) + extra
    info = be(">h", 2) + records + channels
    info += b"\0" * (len(info) % 2)
    layer_mask = be(">I", len(info)) + info
    composite = be(">H", 0) + bytes((i * 7) % 256 for i in range(3 * width * height))
    return header + be(">II", 0, 0) + be(">I", len(layer_mask)) + layer_mask + composite


#: Where the :func:`psd` second layer record keeps its bottom edge (a signed 32-bit number).
PSD_LAYER_BOTTOM = 116


def gif_with_transparency() -> bytes:
    """A palette GIF whose later frames Pillow loads as RGBA (they have a transparent index)."""
    frames = [picture("P", (30, 20), seed) for seed in range(3)]
    return saved(frames, "GIF", transparency=0, disposal=2, duration=[50, 60, 70], loop=0)


def gif_plain() -> bytes:
    """A palette GIF whose later frames Pillow loads as RGB."""
    return saved([picture("P", (30, 20), seed) for seed in range(3)], "GIF", duration=80)


def tiff_mixed() -> bytes:
    """A multi-page TIFF whose pages differ in mode and size (RGB, F, L, P)."""
    pages = [
        picture("RGB", (24, 16), 0),
        picture("L", (10, 8), 1).convert("F"),
        picture("L", (30, 20), 2),
        picture("P", (12, 12), 3),
    ]
    return saved(pages, "TIFF")


def mpo() -> bytes:
    """A multi-picture JPEG as stereo cameras write it: two pictures, the second smaller."""
    return saved([picture("RGB", (48, 32), 0), picture("RGB", (24, 16), 1)], "MPO")


def corpus() -> dict[str, bytes]:
    """A small file of every kind tilechord reads and writes, with several frames where it can."""
    rgb = picture("RGB", (24, 16), 0)
    anim = [picture("RGBA", (20, 14), seed) for seed in range(3)]
    return {
        "png": saved([rgb], "PNG"),
        "apng": saved(anim, "PNG", duration=40, loop=0),
        "jpeg": saved([rgb], "JPEG", quality=90),
        "gif": gif_with_transparency(),
        "gif-rgb": gif_plain(),
        "tiff": tiff_mixed(),
        "webp": saved(anim, "WEBP", lossless=True, duration=40),
        "bmp": saved([rgb], "BMP"),
        "psd": psd(),
        "mpo": mpo(),
        "ico": saved([picture("RGBA", (16, 16), 1)], "ICO"),
        "tga": saved([rgb], "TGA"),
    }


CORPUS = corpus()


def pillow_frames(data: bytes) -> list[Image.Image]:
    """Every frame as Pillow loads it, seeking from the first to the last."""
    image = Image.open(io.BytesIO(data))
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        frames.append(image.copy())
    return frames


# ------------------------------------------------------------------------- structure


def gif_descriptors(data: bytes) -> list[int]:
    """Where each frame's image descriptor (``0x2C`` left top width height) starts."""
    flags = data[10]
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    found = []
    while offset < len(data) and data[offset] != 0x3B:
        if data[offset] == 0x21:  # extension: label, then sub-blocks
            offset += 2
        else:
            found.append(offset)
            local = data[offset + 9]
            offset += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW code size
        while data[offset]:
            offset += data[offset] + 1
        offset += 1
    return found


def gif_with_frame_size(data: bytes, frame: int, width: int, height: int) -> bytes:
    """*data* with one frame's image descriptor declaring another width and height."""
    out = bytearray(data)
    struct.pack_into("<HH", out, gif_descriptors(data)[frame] + 5, width, height)
    return bytes(out)


def tiff_size_entries(data: bytes) -> list[dict[int, tuple[int, int]]]:
    """For each page (IFD) of a little-endian TIFF, its width and length tags: offset, type."""
    assert data[:4] == b"II*\0"
    (ifd,) = struct.unpack_from("<I", data, 4)
    pages = []
    while ifd:
        (count,) = struct.unpack_from("<H", data, ifd)
        tags = {}
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from("<HH", data, entry)
            if tag in (256, 257):
                tags[tag] = (entry + 8, kind)
        pages.append(tags)
        (ifd,) = struct.unpack_from("<I", data, ifd + 2 + 12 * count)
    return pages


def tiff_with_page_size(data: bytes, page: int, width: int, height: int) -> bytes:
    """*data* with one page's declared width and length changed (its pixels stay as they are)."""
    out = bytearray(data)
    for tag, value in ((256, width), (257, height)):
        offset, kind = tiff_size_entries(data)[page][tag]
        struct.pack_into("<H" if kind == 3 else "<I", out, offset, value)
    return bytes(out)


# ------------------------------------------------------------------------- damage


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """Each PNG chunk's (start, end), signature excluded."""
    chunks, offset = [], 8
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        end = min(len(data), offset + 12 + length)
        chunks.append((offset, end))
        offset = end
    return chunks


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """Each JPEG marker segment with a length (APPn, DQT, SOF, DHT, SOS header ...)."""
    segments, offset = [], 2
    while offset + 4 <= len(data) and data[offset] == 0xFF:
        (length,) = struct.unpack_from(">H", data, offset + 2)
        segments.append((offset, offset + 2 + length))
        if data[offset + 1] == 0xDA:  # start of scan: entropy-coded data follows
            break
        offset += 2 + length
    return segments


def _pieces(data: bytes) -> list[tuple[int, int]]:
    """PNG chunks or JPEG marker segments, as (start, end); none for other formats."""
    if data.startswith(b"\x89PNG"):
        return _png_chunks(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_segments(data)
    return []


def _huge_size(data: bytes) -> bytes:
    """The file with its declared size (or a later frame's) made huge, its checksum kept valid."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        struct.pack_into(">II", out, 16, 40_000, 40_000)
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"GIF"):
        descriptors = gif_descriptors(data)
        struct.pack_into("<HH", out, descriptors[-1] + 5, 50_000, 50_000)
    elif data.startswith(b"II*\0"):
        return tiff_with_page_size(data, len(tiff_size_entries(data)) - 1, 65_000, 65_000)
    elif data.startswith(b"BM"):
        struct.pack_into("<ii", out, 18, 30_000, 30_000)
    elif data.startswith(b"8BPS"):
        struct.pack_into(">II", out, 14, 30_000, 30_000)
    elif data.startswith(b"\xff\xd8"):
        for start, _ in _jpeg_segments(data):
            if data[start + 1] in (0xC0, 0xC1, 0xC2):
                struct.pack_into(">HH", out, start + 5, 60_000, 60_000)
    elif data.startswith(b"RIFF") and data[12:16] == b"VP8X":
        out[24:30] = b"\xff\xff\x3f\xff\xff\x3f"  # canvas 16384 x 16384
    return bytes(out)


@dataclass(frozen=True)
class Mutation:
    """One damage: a flipped bit, a byte set, a cut, a piece (PNG chunk, JPEG segment, else
    16 bytes) swapped with another, repeated or dropped, or a huge declared size."""

    kind: str
    where: float
    other: float = 0.0
    bit: int = 0
    value: int = 0

    def __call__(self, data: bytes) -> bytes:
        at = int(self.where * len(data))
        if self.kind == "flip":
            return data[:at] + bytes([data[at] ^ (1 << self.bit)]) + data[at + 1 :]
        if self.kind == "byte":
            return data[:at] + bytes([self.value]) + data[at + 1 :]
        if self.kind == "cut":
            return data[: max(1, at)]
        if self.kind == "huge":
            try:
                return _huge_size(data)
            except (IndexError, KeyError, AssertionError, struct.error):
                return data  # a file already too damaged to find its size fields in
        pieces = _pieces(data) or [(i, min(len(data), i + 16)) for i in range(0, len(data), 16)]
        a, b = pieces[int(self.where * len(pieces))], pieces[int(self.other * len(pieces))]
        if self.kind == "drop":
            return data[: a[0]] + data[a[1] :]
        if self.kind == "repeat":
            return data[: a[1]] + data[a[0] : a[1]] + data[a[1] :]
        first, second = sorted((a, b))
        if first[1] > second[0]:
            return data
        return (
            data[: first[0]] + data[second[0] : second[1]] + data[first[1] : second[0]]
            + data[first[0] : first[1]] + data[second[1] :]
        )  # fmt: skip


def mutations() -> st.SearchStrategy[Mutation]:
    """Any one :class:`Mutation`."""
    unit = st.floats(0, 1, exclude_max=True)
    kinds = st.sampled_from(["flip", "byte", "cut", "swap", "repeat", "drop", "huge"])
    return st.builds(Mutation, kinds, unit, unit, st.integers(0, 7), st.integers(0, 255))


def damaged_file(name: str, damage: list[Mutation]) -> bytes:
    """``CORPUS[name]`` with each mutation done in turn."""
    data = CORPUS[name]
    for mutate in damage:
        data = mutate(data) or data
    return data
