"""Every frame checked from the file, before a job is enqueued (issue #18 items 11-14), no Redis.

:func:`tilechord.imaging.frames.inspect_frames` must give each frame's mode and size as
the split's :func:`decode_frames` will load it (a palette GIF's later frames as RGBA, a
TIFF's mode F page, an MPO's smaller second picture), refuse a later frame over the
limits, and raise nothing but a :class:`TilechordError` whatever the bytes.  The files
are made here with Pillow (a PSD by hand: Pillow reads PSD but cannot write it), and
hypothesis mutates them: bit flips, truncations, swapped or repeated chunks, huge
declared sizes.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageSequence

from tilechord import Client, Settings
from tilechord.errors import ImageTooLarge, InvalidImage, TilechordError, UnsupportedMode
from tilechord.imaging.decode import decode, decode_frames, frame_count, inspect_source
from tilechord.imaging.frames import FrameInfo, inspect_frames

LIMIT = 4_000_000


# ------------------------------------------------------------------------- the files


def _saved(frames: list[Image.Image], fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    extra = {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    frames[0].save(buffer, fmt, **extra, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def _picture(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Gradients and a bar, different for each seed: enough for every codec to keep."""
    w, h = size
    rgb = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.new("L", size, (40 * seed) % 256),
        ),
    )
    rgb.paste((255, 255 - 50 * seed % 256, 0), (seed % w, 0, min(w, seed % w + 3), h))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return rgb.convert(mode)


def psd(width: int = 8, height: int = 6, layer_box: tuple[int, int, int, int] = (1, 2, 4, 7)) -> bytes:
    """A small RGB Photoshop file with two layers: Pillow reads PSD but cannot write it."""
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


def gif_with_transparency() -> bytes:
    """A palette GIF whose later frames Pillow loads as RGBA (they have a transparent index)."""
    frames = [_picture("P", (30, 20), seed) for seed in range(3)]
    return _saved(frames, "GIF", transparency=0, disposal=2, duration=[50, 60, 70], loop=0)


def gif_plain() -> bytes:
    """A palette GIF whose later frames Pillow loads as RGB."""
    return _saved([_picture("P", (30, 20), seed) for seed in range(3)], "GIF", duration=80)


def tiff_mixed() -> bytes:
    """A multi-page TIFF whose pages differ in mode and size (RGB, F, L, P)."""
    pages = [
        _picture("RGB", (24, 16), 0),
        _picture("L", (10, 8), 1).convert("F"),
        _picture("L", (30, 20), 2),
        _picture("P", (12, 12), 3),
    ]
    return _saved(pages, "TIFF")


def mpo() -> bytes:
    """A multi-picture JPEG as stereo cameras write it: two pictures, the second smaller."""
    return _saved([_picture("RGB", (48, 32), 0), _picture("RGB", (24, 16), 1)], "MPO")


def corpus() -> dict[str, bytes]:
    """A small file of every kind tilechord reads and writes, with several frames where it can."""
    rgb = _picture("RGB", (24, 16), 0)
    anim = [_picture("RGBA", (20, 14), seed) for seed in range(3)]
    return {
        "png": _saved([rgb], "PNG"),
        "apng": _saved(anim, "PNG", duration=40, loop=0),
        "jpeg": _saved([rgb], "JPEG", quality=90),
        "gif": gif_with_transparency(),
        "gif-rgb": gif_plain(),
        "tiff": tiff_mixed(),
        "webp": _saved(anim, "WEBP", lossless=True, duration=40),
        "bmp": _saved([rgb], "BMP"),
        "psd": psd(),
        "mpo": mpo(),
        "ico": _saved([_picture("RGBA", (16, 16), 1)], "ICO"),
        "tga": _saved([rgb], "TGA"),
    }


CORPUS = corpus()


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


def gif_with_frame_size(data: bytes, frame: int, width: int, height: int) -> bytes:
    out = bytearray(data)
    struct.pack_into("<HH", out, gif_descriptors(data)[frame] + 5, width, height)
    return bytes(out)


def reference_frames(data: bytes) -> list[FrameInfo]:
    """Every frame as Pillow's own iteration loads it."""
    out = []
    for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data))):
        frame.load()
        out.append(FrameInfo(frame.mode, frame.size))
    return out


# ------------------------------------------------------------------------- frames


@pytest.mark.parametrize("name", ["gif", "gif-rgb", "tiff", "mpo", "webp", "apng"])
def test_every_frame_is_seen_as_pillow_loads_it(name: str) -> None:
    data = CORPUS[name]
    expected = reference_frames(data)
    assert len(expected) > 1
    count = inspect_source(data, LIMIT).frames
    assert count == len(expected)
    assert list(inspect_frames(data, LIMIT, count)) == expected
    frames, _ = decode_frames(data, LIMIT, count)  # what the split will cut
    assert [FrameInfo(f.mode, f.size) for f in frames] == expected


def test_a_palette_gif_has_rgba_frames_after_the_first() -> None:
    modes = [frame.mode for frame in inspect_frames(CORPUS["gif"], LIMIT, 3)]
    assert modes == ["P", "RGBA", "RGBA"]


def test_a_tiff_page_may_be_mode_f_and_of_its_own_size() -> None:
    frames = inspect_frames(CORPUS["tiff"], LIMIT, 4)
    assert frames[1] == FrameInfo("F", (10, 8))
    assert [f.mode for f in frames] == ["RGB", "F", "L", "P"]


def test_mpo_is_read_with_every_picture_and_writes_as_an_animation() -> None:
    info = inspect_source(CORPUS["mpo"], LIMIT)
    assert (info.format, info.frames) == ("MPO", 2)
    assert frame_count(info, "MPO", LIMIT) == 2
    assert frame_count(info, "JPEG", LIMIT) == 1  # a single-picture format gets the first


def test_plan_checks_every_frame_without_reaching_redis() -> None:
    """Client.plan validates a job completely: a later frame's mode too, with no Redis there."""
    client = Client(Settings(redis_url="redis://127.0.0.1:9/0"))
    with pytest.raises(UnsupportedMode, match=r"^frame 2 of 3 of the GIF image is mode RGBA: invert"):
        client.plan(CORPUS["gif"], ["invert"], (2, 2), None)
    with pytest.raises(UnsupportedMode, match=r"^frame 2 of 4 of the TIFF image is mode F: invert"):
        client.plan(CORPUS["tiff"], ["invert"], (2, 2), "TIFF")
    assert client.plan(CORPUS["tiff"], ["invert"], (2, 2), "JPEG")[3] == "JPEG"  # the first page only
    assert client.plan(CORPUS["mpo"], ["invert"], (2, 2), None)[3] == "MPO"


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA"])
def test_an_icns_is_inspected_in_the_mode_it_loads_in_not_its_headers(mode: str) -> None:
    """An ICNS header says RGBA whatever the icon holds; Pillow settles the mode as it loads."""
    data = _saved([_picture(mode, (32, 32), 1)], "ICNS")
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    info = inspect_source(data, LIMIT)
    loaded = decode(data, LIMIT)
    assert (info.mode, info.size) == (loaded.mode, loaded.size) == (mode, (1024, 1024))
    assert inspect_frames(data, LIMIT, 1) == (FrameInfo(mode, (1024, 1024)),)


# ------------------------------------------------------------------------- limits


def test_the_pixel_limit_adds_up_the_frames_real_sizes() -> None:
    """Three pages of 24x16, 10x8 and 30x20: the limit meets their sum, not 3 x the first."""
    data = CORPUS["tiff"]
    total = 24 * 16 + 10 * 8 + 30 * 20
    assert len(inspect_frames(data, total, 3)) == 3
    with pytest.raises(ImageTooLarge, match=r"the first 3 frames of the TIFF image have 1,064 pixels"):
        inspect_frames(data, total - 1, 3)


def test_a_tiff_page_declared_huge_is_refused_from_its_header() -> None:
    data = tiff_with_page_size(CORPUS["tiff"], 2, 60_000, 60_000)
    with pytest.raises(ImageTooLarge, match=r"the first 3 frames of the TIFF image .* over the limit"):
        inspect_frames(data, LIMIT, 4)


def test_a_later_tiff_page_over_pillows_own_limit_is_refused_before_any_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TIFF applies Image.MAX_IMAGE_PIXELS as it loads a page: the header walk applies it first."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)  # errors above 500 pixels: page 3 is 600
    with pytest.raises(ImageTooLarge, match=r"frame 3 of the TIFF image is too large for Pillow"):
        inspect_frames(CORPUS["tiff"], LIMIT, 4)


def test_a_gif_frame_that_grows_the_canvas_is_counted_at_its_size() -> None:
    data = gif_with_frame_size(CORPUS["gif-rgb"], 1, 300, 200)
    with pytest.raises((ImageTooLarge, InvalidImage)):
        decode_frames(data, 10_000, 3)  # the split would refuse it too (or find the frame short)
    with pytest.raises(
        ImageTooLarge, match=r"the first 2 frames of the GIF image .* over the limit of 10,000"
    ):
        inspect_frames(data, 10_000, 3)


def test_a_gif_frame_pillow_calls_a_bomb_is_image_too_large() -> None:
    data = gif_with_frame_size(CORPUS["gif-rgb"], 2, 65_535, 65_535)
    with pytest.raises(ImageTooLarge, match=r"frame 3 of the GIF image is too large for Pillow"):
        inspect_frames(data, 10**10, 3)


# ------------------------------------------------------------------------- PSD


def test_a_psd_is_its_composite_and_its_layers_are_not_read() -> None:
    info = inspect_source(psd(), LIMIT)
    assert (info.format, info.mode, info.size, info.frames) == ("PSD", "RGB", (8, 6), 1)
    assert decode(psd(), LIMIT).tobytes() == Image.open(io.BytesIO(psd())).convert("RGB").tobytes()


def test_a_psd_with_a_damaged_layer_record_is_still_its_composite() -> None:
    """A layer whose bottom is above its top made reading n_frames raise ValueError."""
    damaged = psd(layer_box=(4, 2, 1, 7))
    with pytest.raises(ValueError, match="negative tile size"):
        Image.open(io.BytesIO(damaged)).n_frames  # noqa: B018 - Pillow's own failure, pinned
    assert inspect_source(damaged, LIMIT).frames == 1
    assert decode(damaged, LIMIT).size == (8, 6)


def test_a_frame_table_pillow_cannot_read_is_invalid_image() -> None:
    """An MPO whose picture index is cut short: n_frames itself fails."""
    data = bytearray(CORPUS["mpo"])
    at = data.index(b"MPF\0")
    data[at + 4 : at + 40] = b"\xff" * 36
    try:
        info = inspect_source(bytes(data), LIMIT)
    except TilechordError:
        return
    assert info.frames >= 1


# ------------------------------------------------------------------------- fuzz


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
    unit = st.floats(0, 1, exclude_max=True)
    kinds = st.sampled_from(["flip", "byte", "cut", "swap", "repeat", "drop", "huge"])
    return st.builds(Mutation, kinds, unit, unit, st.integers(0, 7), st.integers(0, 255))


def damaged(name: str, damage: list[Mutation]) -> bytes:
    data = CORPUS[name]
    for mutate in damage:
        data = mutate(data) or data
    return data


def _loaded(data: bytes) -> list[FrameInfo] | None:
    """Every frame as the split loads it, or None where the split refuses the file (typed)."""
    try:
        info = inspect_source(data, LIMIT)
        frames, _ = decode_frames(data, LIMIT, frame_count(info, "TIFF", LIMIT))
    except TilechordError:
        return None
    return [FrameInfo(frame.mode, frame.size) for frame in frames]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CORPUS)), damage=st.lists(mutations(), min_size=1, max_size=3))
def test_no_damaged_file_raises_anything_but_a_typed_error(name: str, damage: list[Mutation]) -> None:
    """Header inspection and every frame's check give a TilechordError or the split's own view."""
    data = damaged(name, damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            info = inspect_source(data, LIMIT)
            count = frame_count(info, "TIFF", LIMIT)  # an output that holds every frame
            frames = list(inspect_frames(data, LIMIT, count))
        except TilechordError:
            return
        loaded = _loaded(data)
    if loaded is not None:  # where the split decodes every frame, it sees what the client saw
        assert frames == loaded
