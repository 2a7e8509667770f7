"""tilechord's pixel limit replaces Pillow's on open, without touching Pillow's global.

``PIL.Image.MAX_IMAGE_PIXELS`` is process-wide: a library that lifts it, even for one
open under a lock, lifts it for every other thread of the user's program.  These tests
open headers of 100 MP and 200 MP (a PNG IHDR with no pixel data, a few dozen bytes) and
check that tilechord's limit decides, that Pillow's global never moves, and that the
places where Pillow's own decoders apply it give a clear :class:`ImageTooLarge`.
"""

from __future__ import annotations

import io
import struct
import sys
import threading
import warnings
import zlib
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest
from PIL import Image

from tilechord.errors import ImageTooLarge
from tilechord.imaging.decode import SourceInfo, decode, decode_frames, inspect_source

PILLOW_LIMIT = Image.MAX_IMAGE_PIXELS  # as the test process found it; nothing may change it


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A grey PNG that says it is *width* x *height* and holds no pixels: cheap to open."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"") + _chunk(b"IEND", b"")


HUGE = png_header(20_000, 10_000)  # 200 MP: over Pillow's error limit (179 MP)
BIG = png_header(10_000, 10_000)  # 100 MP: over Pillow's warning limit (89 MP), under its error


def test_pillow_refuses_the_huge_header_itself() -> None:
    """The premise: with Pillow's limit as shipped, ``Image.open`` alone cannot read it."""
    assert PILLOW_LIMIT is not None and 2 * PILLOW_LIMIT < 200_000_000 < 4 * PILLOW_LIMIT
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(HUGE))


def test_a_header_over_pillows_limit_but_within_ours_opens() -> None:
    assert inspect_source(HUGE, 300_000_000) == SourceInfo("PNG", "L", (20_000, 10_000), 1)
    assert Image.MAX_IMAGE_PIXELS == PILLOW_LIMIT


@pytest.mark.parametrize("data", [HUGE, BIG], ids=["200MP", "100MP"])
def test_a_header_over_our_limit_is_too_large_with_the_message_naming_the_setting(data: bytes) -> None:
    width, height = (20_000, 10_000) if data is HUGE else (10_000, 10_000)
    with pytest.raises(ImageTooLarge) as caught:
        inspect_source(data, 50_000_000)
    assert str(caught.value) == (
        f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
        "50,000,000 (raise TILECHORD_MAX_PIXELS to allow it)"
    )


@pytest.mark.parametrize("data", [HUGE, BIG], ids=["200MP", "100MP"])
def test_opening_a_big_header_warns_nothing(data: bytes) -> None:
    """Pillow's decompression-bomb warning is not ours to pass on: our limit decides."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inspect_source(data, 300_000_000)
    assert [w.message for w in caught] == []


@pytest.fixture
def tight_switching() -> Iterator[None]:
    """Switch threads as often as the interpreter can, so a brief change is seen."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(saved)


@pytest.mark.usefixtures("tight_switching")
def test_pillows_limit_never_changes_while_another_thread_opens_huge_images() -> None:
    seen: set[int | None] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(Image.MAX_IMAGE_PIXELS)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(300):
            inspect_source(HUGE, 300_000_000)
            with pytest.raises(ImageTooLarge):
                inspect_source(HUGE, 100_000_000)
    finally:
        stop.set()
        watcher.join()
    assert seen == {PILLOW_LIMIT}


def test_pillows_limit_is_in_place_at_every_call_made_while_opening() -> None:
    """The same, deterministically: a tracer reads the global at each call inside the open."""
    seen: set[int | None] = set()

    def tracer(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            seen.add(Image.MAX_IMAGE_PIXELS)

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        inspect_source(HUGE, 300_000_000)
        decode(png_image(), 300_000_000)
    finally:
        sys.settrace(previous)
    assert seen == {PILLOW_LIMIT}


def png_image(size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _file(fmt: str, frames: int = 1) -> bytes:
    images = [Image.new("RGB", (40, 30), (60 * i, 20, 30)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, fmt, save_all=frames > 1, append_images=images[1:])
    return buffer.getvalue()


@pytest.fixture
def small_pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's limit at 500 pixels, so a 40x30 image stands for one over 179 MP.

    The tests that use it check the places where Pillow's decoders apply the limit
    themselves; the test process's own setting, not tilechord, moves it.
    """
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)


@pytest.mark.usefixtures("small_pillow_limit")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TGA", "PPM"])
def test_formats_pillow_checks_only_on_open_decode_past_its_limit(fmt: str) -> None:
    image = decode(_file(fmt), 10_000)
    assert (image.format, image.size) == (fmt, (40, 30))


@pytest.mark.usefixtures("small_pillow_limit")
def test_an_animation_pillow_checks_only_on_open_decodes_every_frame() -> None:
    frames, _ = decode_frames(_file("PNG", 3), 10_000, 3)
    assert [frame.getpixel((0, 0)) for frame in frames] == [(0, 20, 30), (60, 20, 30), (120, 20, 30)]


@pytest.mark.usefixtures("small_pillow_limit")
def test_a_decoder_that_applies_pillows_limit_itself_gives_image_too_large() -> None:
    """TIFF checks on load: no longer Pillow's bare DecompressionBombError, and it says why."""
    with pytest.raises(
        ImageTooLarge,
        match=r"the TIFF image is too large for Pillow to decode: .*"
        r"PIL\.Image\.MAX_IMAGE_PIXELS",
    ):
        decode(_file("TIFF"), 10_000)


@pytest.mark.usefixtures("small_pillow_limit")
def test_a_decoder_that_applies_pillows_limit_on_open_gives_image_too_large() -> None:
    """WebP checks while opening, inside its plugin: only Pillow's own global could lift that."""
    with pytest.raises(ImageTooLarge, match=r"too large for Pillow to open: .*TILECHORD_MAX_PIXELS cannot"):
        inspect_source(_file("WEBP"), 10_000)


@pytest.mark.usefixtures("small_pillow_limit")
def test_a_frame_a_decoder_refuses_on_seek_gives_image_too_large() -> None:
    with pytest.raises(ImageTooLarge, match=r"frame 2 of the GIF image is too large for Pillow"):
        decode_frames(_file("GIF", 3), 10_000, 3)
