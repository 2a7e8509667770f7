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
import warnings

import pytest
from damaged import (
    CORPUS,
    Mutation,
    damaged_file,
    gif_with_frame_size,
    mutations,
    picture,
    psd,
    saved,
    tiff_with_page_size,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageSequence

from tilechord import Client, Settings
from tilechord.errors import ImageTooLarge, InvalidImage, TilechordError, UnsupportedMode
from tilechord.imaging.decode import decode, decode_frames, frame_count, inspect_source
from tilechord.imaging.frames import FrameInfo, inspect_frames

LIMIT = 4_000_000


# ------------------------------------------------------------------------- the files (in damaged.py)


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
    data = saved([picture(mode, (32, 32), 1)], "ICNS")
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
    data = damaged_file(name, damage)
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
