"""tilechord.imaging.strips: a PNG decoded strip by strip equals Pillow's whole decode, cropped.

The PNGs are written here by hand (every bit depth and colour type PNG has, each row with a
seeded filter type, the data cut into IDAT chunks of seeded sizes) as well as by Pillow
(its own adaptive filters, APNG, tRNS, text).  Every strip is compared with
``Image.open(data).crop(...)``: mode, size, bytes, info, palette.  The memory test runs in
a subprocess and reads its own resident high-water mark (VmHWM), which sees Pillow's C
buffers, unlike tracemalloc.
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tilechord.errors import ImageTooLarge, InvalidImage, InvalidParameter, TilechordError
from tilechord.imaging.strips import NotStreamable, can_stream, iter_strips

LIMIT = 10**9

# (bit depth, colour type) -> samples per pixel: every combination PNG allows.
COMBINATIONS = {
    (1, 0): 1, (2, 0): 1, (4, 0): 1, (8, 0): 1, (16, 0): 1,
    (8, 2): 3, (16, 2): 3,
    (1, 3): 1, (2, 3): 1, (4, 3): 1, (8, 3): 1,
    (8, 4): 2, (16, 4): 2,
    (8, 6): 4, (16, 6): 4,
}  # fmt: skip


def _chunk(cid: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(cid + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filtered(row: bytes, prev: bytes, kind: int, bpp: int) -> bytes:
    """One scanline filtered with PNG filter *kind* (0-4), its filter byte first."""
    out = bytearray([kind])
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
        out.append((x - pred) % 256)
    return bytes(out)


def hand_png(depth: int, ctype: int, size: tuple[int, int], seed: int, **kw: object) -> bytes:
    """A PNG with seeded pixels, a seeded filter per row and seeded IDAT chunk sizes.

    ``flat`` makes most rows repeat (long zlib matches); ``before``/``after`` are extra
    chunks (name, body) around the image data; ``level`` is the zlib level.
    """
    rnd = random.Random(seed)
    w, h = size
    bits = depth * COMBINATIONS[(depth, ctype)]
    row_bytes, bpp = (bits * w + 7) // 8, max(1, bits // 8)
    raw = bytearray()
    prev = bytes(row_bytes)
    for y in range(h):
        if kw.get("flat") and y % 7:
            row = prev
        else:
            row = bytes(rnd.randrange(256) for _ in range(row_bytes))
            if ctype == 3 and depth == 8:
                row = bytes(v % 40 for v in row)  # indices inside the palette
        raw += _filtered(row, prev, rnd.randrange(5), bpp)
        prev = row
    stream = zlib.compress(bytes(raw), int(kw.get("level", 6)))  # type: ignore[call-overload]
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if ctype == 3:
        out += _chunk(b"PLTE", bytes(rnd.randrange(256) for _ in range(3 * min(40, 2**depth))))
    for cid, body in kw.get("before", ()):  # type: ignore[attr-defined]
        out += _chunk(cid, body)
    while stream:
        cut = rnd.choice((0, 1, 7, 100, 5000, len(stream)))
        out += _chunk(b"IDAT", stream[:cut])
        stream = stream[cut:]
    for cid, body in kw.get("after", ()):  # type: ignore[attr-defined]
        out += _chunk(cid, body)
    return out + _chunk(b"IEND", b"")


def adam7_png(image: Image.Image) -> bytes:
    """An interlaced (Adam7) 8-bit RGB PNG of *image*, every pass's rows unfiltered."""
    w, h = image.size
    pixels = image.tobytes()
    passes = (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    )
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        for y in range(y0, h, dy):
            row = b"".join(pixels[3 * (y * w + x) : 3 * (y * w + x) + 3] for x in range(x0, w, dx))
            raw += b"\0" + row if row else b""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw)))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def saved(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Seeded pixels of *mode*, half noise, half flat, so that filters and matches both occur."""
    rnd = random.Random(seed)
    probe = Image.new(mode, (1, 1))
    length = len(probe.tobytes()) * size[0] * size[1]
    data = bytes(rnd.randrange(256) if i % 97 < 50 else 7 for i in range(length))
    if mode == "P":
        image = Image.frombytes("L", size, data).convert("P")
        image.putpalette([rnd.randrange(256) for _ in range(768)])
        return image
    return Image.frombytes(mode, size, data)


def assert_strips_match(data: bytes, rows: int) -> int:
    """Every strip equals Pillow's whole decode cropped to it; returns how many strips."""
    whole = Image.open(io.BytesIO(data))
    whole.load()
    w, h = whole.size
    strips = list(iter_strips(data, rows, LIMIT))
    assert [s.size for s in strips] == [(w, min(rows, h - y)) for y in range(0, h, rows)]
    for y, strip in zip(range(0, h, rows), strips, strict=True):
        expected = Image.open(io.BytesIO(data)).crop((0, y, w, min(y + rows, h)))
        assert strip.mode == expected.mode
        assert strip.tobytes() == expected.tobytes(), f"strip at row {y} differs"
        assert strip.info == expected.info
        if strip.mode == "P":
            assert strip.getpalette() == expected.getpalette()
            assert strip.palette is not None and expected.palette is not None
            assert strip.palette.mode == expected.palette.mode
            assert strip.palette.palette == expected.palette.palette
            assert strip.im.getpalettemode() == expected.im.getpalettemode()
            assert strip.convert("RGBA").tobytes() == expected.convert("RGBA").tobytes()
    return len(strips)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(("depth", "ctype"), sorted(COMBINATIONS))
@pytest.mark.parametrize("size", [(1, 1), (13, 7), (37, 29)])
def test_every_bit_depth_and_colour_type_and_filter_streams_as_pillow_decodes(
    depth: int, ctype: int, size: tuple[int, int]
) -> None:
    data = hand_png(depth, ctype, size, seed=depth * 10 + ctype)
    for rows in (1, 2, 5, size[1], size[1] + 3):
        assert_strips_match(data, rows)


@pytest.mark.parametrize(("depth", "ctype"), [(1, 0), (4, 3), (8, 2), (16, 2), (16, 6), (16, 4)])
def test_long_matches_and_stored_blocks_cross_strip_boundaries_exactly(depth: int, ctype: int) -> None:
    for level in (0, 9):
        data = hand_png(depth, ctype, (211, 97), seed=3, flat=True, level=level)
        assert_strips_match(data, 10)


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_pillow_written_pngs_stream_as_pillow_decodes(mode: str) -> None:
    image = noise(mode, (45, 33), seed=len(mode))
    for options in ({}, {"optimize": True}, {"compress_level": 1}):
        assert_strips_match(saved(image, **options), 4)


def test_transparency_text_and_exif_after_the_image_data_are_in_every_strip() -> None:
    for mode, transparency in (("P", 3), ("L", 9), ("RGB", (1, 2, 3))):
        data = saved(noise(mode, (20, 11), 5), transparency=transparency)
        assert_strips_match(data, 3)
        assert next(iter_strips(data, 3, LIMIT)).info["transparency"] == transparency
    palette_alpha = saved(noise("P", (20, 11), 6), transparency=bytes(range(0, 256, 3)))
    assert_strips_match(palette_alpha, 2)
    tail = [(b"tEXt", b"Comment\0after the pixels"), (b"eXIf", b"MM\0*\0\0\0\x08\0\0")]
    data = hand_png(8, 2, (9, 8), seed=1, before=[(b"gAMA", struct.pack(">I", 45455))], after=tail)
    assert_strips_match(data, 3)
    assert next(iter_strips(data, 3, LIMIT)).info["Comment"] == "after the pixels"


def test_an_apng_streams_its_first_frame_only() -> None:
    frames = [noise("RGBA", (24, 18), seed) for seed in range(3)]
    for default_image in (False, True):
        buffer = io.BytesIO()
        frames[0].save(
            buffer, "PNG", save_all=True, append_images=frames[1:], duration=[40, 50, 60], loop=2,
            default_image=default_image,
        )  # fmt: skip
        data = buffer.getvalue()
        assert Image.open(io.BytesIO(data)).n_frames == 3
        assert can_stream(data)
        assert_strips_match(data, 5)
        assert b"".join(s.tobytes() for s in iter_strips(data, 5, LIMIT)) == frames[0].tobytes()


def test_strips_are_independent_images_and_the_iterator_is_lazy() -> None:
    data = hand_png(8, 2, (16, 40), seed=9)
    strips = iter_strips(data, 8, LIMIT)
    first = next(strips)
    first.putpixel((0, 0), (1, 2, 3))  # a strip the caller edits does not feed the next one
    rest = list(strips)
    assert len(rest) == 4
    assert [s.tobytes() for s in iter_strips(memoryview(data), 8, LIMIT)][1:] == [s.tobytes() for s in rest]
    assert b"".join(s.tobytes() for s in rest) == Image.open(io.BytesIO(data)).crop((0, 8, 16, 40)).tobytes()


def test_pillows_own_pixel_limit_does_not_apply_only_tilechords(monkeypatch: pytest.MonkeyPatch) -> None:
    data = hand_png(8, 2, (30, 10), seed=2)
    expected = Image.open(io.BytesIO(data)).tobytes()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow itself now refuses over 200 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert can_stream(data)
    assert b"".join(s.tobytes() for s in iter_strips(data, 4, 300)) == expected


# ----------------------------------------------------------------------------- refusals


def test_interlaced_png_and_jpeg_are_refused_before_any_strip() -> None:
    rgb = noise("RGB", (30, 20), 1)
    jpeg = io.BytesIO()
    rgb.save(jpeg, "JPEG")
    interlaced = adam7_png(rgb)
    assert Image.open(io.BytesIO(interlaced)).tobytes() == rgb.tobytes()  # a good Adam7 file
    for data in (interlaced, jpeg.getvalue(), b"GIF89a" + bytes(20)):
        assert not can_stream(data)
        with pytest.raises((NotStreamable, InvalidImage)):
            iter_strips(data, 4, LIMIT)
    assert can_stream(saved(rgb))
    with pytest.raises(NotStreamable, match="interlaced"):
        iter_strips(interlaced, 4, LIMIT)
    with pytest.raises(NotStreamable, match="JPEG"):
        iter_strips(jpeg.getvalue(), 4, LIMIT)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    header = hand_png(8, 2, (20, 10), seed=1)[:33]  # signature and IHDR only: no pixels at all
    big = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    with pytest.raises(ImageTooLarge):
        iter_strips(big + _chunk(b"IDAT", b"x"), 16, LIMIT)
    with pytest.raises(ImageTooLarge):
        iter_strips(hand_png(8, 2, (20, 10), seed=1), 4, 199)
    assert len(list(iter_strips(hand_png(8, 2, (20, 10), seed=1), 4, 200))) == 3
    with pytest.raises(InvalidImage):
        list(iter_strips(header, 4, LIMIT))
    with pytest.raises(InvalidParameter):
        iter_strips(hand_png(8, 2, (20, 10), seed=1), 0, LIMIT)


def _pillow_result(data: bytes) -> bytes | None:
    """Pillow's whole decode of *data*, or None where Pillow refuses it."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.tobytes()
    except Exception:
        return None


def _streamed(data: bytes) -> bytes | None:
    """Every strip's bytes joined, or None where the stream says InvalidImage (nothing else)."""
    try:
        return b"".join(s.tobytes() for s in iter_strips(data, 3, LIMIT))
    except NotStreamable:
        return b"not streamable"
    except TilechordError as exc:
        assert isinstance(exc, InvalidImage)
        return None


def test_every_truncation_is_refused_exactly_where_pillow_refuses_it() -> None:
    data = hand_png(8, 2, (15, 12), seed=4)
    outcomes = [_streamed(data[:cut]) for cut in range(len(data) + 1)]
    assert outcomes == [_pillow_result(data[:cut]) for cut in range(len(data) + 1)]
    assert outcomes.count(None) > len(data) // 2  # most cuts are refused, as InvalidImage


def test_flipped_bits_are_refused_exactly_where_pillow_refuses_them() -> None:
    rnd = random.Random(16)
    outcomes = []
    for seed in range(4):
        data = hand_png(8, 6, (17, 13), seed=seed, level=1)
        for _ in range(60):
            damaged = bytearray(data)
            damaged[rnd.randrange(33, len(damaged))] ^= 1 << rnd.randrange(8)
            outcomes.append((_streamed(bytes(damaged)), _pillow_result(bytes(damaged))))
    assert all(streamed == pillow for streamed, pillow in outcomes)
    assert sum(pillow is None for _, pillow in outcomes) > 100  # the damage is mostly fatal


def test_a_zlib_stream_that_ends_before_the_last_row_is_invalid_image() -> None:
    rows = b"".join(b"\0" + bytes(range(i, i + 30)) for i in range(4))  # 4 of the 10 rows
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 10, 10, 8, 2, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
    with pytest.raises(InvalidImage, match="ends before the last row"):
        list(iter_strips(png, 3, LIMIT))
    # Pillow itself leaves the missing rows black here (the stream's end came with the last
    # row's data), and calls the same file truncated when the end comes in a later chunk.
    assert _pillow_result(png) == _flat(rows, 4) + bytes(6 * 30)


def _flat(filtered: bytes, count: int) -> bytes:
    """The pixel bytes of *count* unfiltered (filter 0) scanlines."""
    size = len(filtered) // count
    return b"".join(filtered[i * size + 1 : (i + 1) * size] for i in range(count))


# ----------------------------------------------------------------------------- memory

_MEASURE = r"""
import hashlib, io, json, sys
from PIL import Image
from tilechord.imaging.strips import iter_strips

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
how = sys.argv[2]
digest = hashlib.sha256()
before = hwm()
if how == "strips":
    for strip in iter_strips(data, 256, 10**9):
        digest.update(strip.tobytes())
        del strip
else:
    image = Image.open(io.BytesIO(data))
    image.load()
    digest.update(image.tobytes())
print(json.dumps({"grown": hwm() - before, "digest": digest.hexdigest()}))
"""


def _measure(path: Path, how: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), how], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_an_8000x6000_png_streams_in_a_small_part_of_the_whole_images_memory(tmp_path: Path) -> None:
    size = (8000, 6000)
    base = Image.linear_gradient("L").resize(size)
    image = Image.merge(
        "RGB", (base, base.transpose(Image.Transpose.ROTATE_180), Image.effect_noise(size, 40))
    )
    path = tmp_path / "big.png"
    image.save(path, compress_level=1)
    del image, base
    decoded = size[0] * size[1] * 4  # Pillow keeps RGB in four bytes a pixel
    streamed, whole = _measure(path, "strips"), _measure(path, "whole")
    assert streamed["digest"] == whole["digest"]
    assert int(whole["grown"]) > decoded  # the measure sees the whole image when it is decoded
    assert int(streamed["grown"]) < decoded // 4, streamed  # measured: about 31 MB of 192
