"""Frames and output formats through the real workers (issue #18 items 8, 11, 12, 13 and 14).

* 8: a format Pillow registers with a stub writer (BUFR, GRIB, HDF5, WMF) is "no writer",
  not advice to convert an RGB image to RGB, from the API and the command line.
* 11: every frame's mode is checked before anything is enqueued: a palette GIF's later
  RGBA frames, a TIFF's mode F page.  Where every frame's mode is accepted, each frame is
  processed as Pillow processes it (its own mode and size).
* 12: an MPO keeps both its pictures, written as MPO, equal to Pillow frame by frame (and
  an AVIF sequence its frames, the other format Pillow writes with ``save_all``).
* 13: a decompression bomb in a later frame is ``ImageTooLarge`` before enqueueing.
* 14: a PSD whose layer records are damaged is still its composite, as Pillow reads it.

The files are made here with Pillow (the PSD by hand: Pillow cannot write PSD).
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from damaged import gif_with_frame_size, gradients, pillow_frames, psd, saved
from images import photo
from PIL import Image, ImageOps, JpegImagePlugin, features
from procs import tilechord_cli
from reference import pillow, reference
from workers import PLUGINS, SUPPORT

from tilechord import Client
from tilechord.errors import ImageTooLarge, UnsupportedFormat, UnsupportedMode

Messages = Callable[[], list[dict[str, Any]]]


def _palette(seed: int, size: tuple[int, int] = (40, 28)) -> Image.Image:
    """A palette picture with a block of index 0 (made transparent in the GIFs): no noise, so
    every process makes the same file."""
    picture = gradients(size, (60 * seed) % 256).convert("P", palette=Image.Palette.ADAPTIVE, colors=48)
    picture.paste(0, (seed * 5, 3, seed * 5 + 6, 12))
    return picture


def gif_with_transparency() -> bytes:
    """A palette GIF whose frames after the first Pillow loads as RGBA."""
    frames = [_palette(seed) for seed in range(3)]
    return saved(frames, "GIF", transparency=0, disposal=2, duration=[50, 60, 70], loop=0)


def tiff_mixed() -> bytes:
    """Four pages of their own modes and sizes: RGB, F, L and P."""
    pages = [
        photo(40, 28, seed=1),
        photo(18, 12, mode="F", seed=2),
        photo(30, 20, mode="L", seed=3),
        photo(16, 16, mode="P", seed=4),
    ]
    return saved(pages, "TIFF")


def mpo() -> bytes:
    """Two pictures, the second smaller, as a stereo camera or a phone writes them."""
    return saved([photo(64, 48, seed=5), photo(32, 24, seed=6)], "MPO", quality=90)


def assert_same_frames(actual: list[Image.Image], expected: list[Image.Image]) -> None:
    assert [(f.mode, f.size) for f in actual] == [(f.mode, f.size) for f in expected]
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        assert got.tobytes() == want.tobytes(), f"frame {index + 1} differs"
        if want.mode in ("P", "PA"):
            assert got.getpalette() == want.getpalette(), f"frame {index + 1}'s palette differs"


def assert_workers_serve_the_next_job(client: Client) -> None:
    image = photo(64, 40, seed=9)
    assert client.process_image(image, ["invert"], grid=(2, 1), timeout=60).tobytes() == (
        pillow(image, "invert").tobytes()
    )


# ------------------------------------------------------------------ 11: every frame's mode


def test_a_gif_whose_later_frames_are_rgba_is_refused_naming_the_frame_before_enqueueing(
    client: Client, messages: Messages, no_leftovers: None
) -> None:
    data = gif_with_transparency()
    frames = pillow_frames(data)
    assert [f.mode for f in frames] == ["P", "RGBA", "RGBA"]
    ImageOps.invert(frames[0])  # Pillow inverts the first frame ...
    with pytest.raises(OSError, match="not supported for mode RGBA"):
        ImageOps.invert(frames[1])  # ... and refuses the second
    with pytest.raises(UnsupportedMode, match=r"^frame 2 of 3 of the GIF image is mode RGBA: invert cannot"):
        client.process(data, ["invert"], grid=(2, 2))
    assert messages() == []  # not one task message: refused from the file, in the client
    assert_workers_serve_the_next_job(client)


def test_a_tiff_page_of_mode_f_is_refused_naming_the_page_before_enqueueing(
    client: Client, messages: Messages, no_leftovers: None
) -> None:
    with pytest.raises(UnsupportedMode, match=r"^frame 2 of 4 of the TIFF image is mode F: invert cannot"):
        client.process(tiff_mixed(), ["invert"], grid=(2, 2))
    assert messages() == []


def test_each_page_of_a_mixed_tiff_is_processed_as_pillow_processes_it(
    client: Client, no_leftovers: None
) -> None:
    data = tiff_mixed()
    steps = ["mirror", "rotate:angle=90"]
    out = client.process(data, steps, grid=(2, 2))
    expected = [pillow(pillow(frame, steps[0]), steps[1]) for frame in pillow_frames(data)]
    assert_same_frames(pillow_frames(out), expected)


def test_each_frame_of_a_gif_with_rgba_frames_is_processed_in_its_own_mode(
    client: Client, no_leftovers: None
) -> None:
    """Frames P, RGBA, RGBA: into a TIFF (which keeps each frame's mode), equal to Pillow's."""
    data = gif_with_transparency()
    out = client.process(data, ["mirror"], grid=(3, 2), format="TIFF")
    edited = [pillow(f, "mirror") for f in pillow_frames(data)]
    assert_same_frames(pillow_frames(out), pillow_frames(saved(edited, "TIFF")))


def test_an_animation_the_output_writer_refuses_is_refused_before_enqueueing(
    client: Client, messages: Messages, no_leftovers: None
) -> None:
    """WebP frames must share one size; Pillow's writer refuses these pages, so tilechord does first."""
    frames = [pillow(f, "mirror") for f in pillow_frames(tiff_mixed())]
    with pytest.raises(RuntimeError):
        saved(frames, "WEBP")
    with pytest.raises(
        UnsupportedFormat, match=r"^frame 2 of 4: WEBP cannot hold a mode F|^WEBP cannot hold these 4"
    ):
        client.process(tiff_mixed(), ["mirror"], grid=(2, 2), format="WEBP")
    assert messages() == []


def test_an_icns_is_checked_in_the_mode_pillow_loads_it_in(
    client: Client, messages: Messages, no_leftovers: None
) -> None:
    """Its header says RGBA for every icon: an L icon is inverted as Pillow inverts it, and a
    blur of a palette icon (which Pillow refuses) is refused before anything is enqueued."""
    grey = saved([photo(32, 32, mode="L", seed=7)], "ICNS")
    loaded = Image.open(io.BytesIO(grey))
    loaded.load()
    out = client.process(grey, ["invert"], grid=(2, 2), format="PNG")
    assert Image.open(io.BytesIO(out)).tobytes() == pillow(loaded, "invert").tobytes()
    palette = saved([_palette(2, (32, 32))], "ICNS")
    with pytest.raises(UnsupportedMode, match=r"gaussian_blur.* mode P"):
        client.process(palette, ["gaussian_blur:radius=1"], grid=(2, 2), format="PNG")
    assert [m["task"] for m in messages()].count("tilechord.split") == 1  # the grey icon's job only


# ------------------------------------------------------------------ 12: MPO


def _mpo_reference(data: bytes, steps: list[str]) -> list[Image.Image]:
    """Pillow's own MPO of the edited pictures, with the source's tables, as JPEG keeps them."""
    source = Image.open(io.BytesIO(data))
    edited = [reference(frame, steps) for frame in pillow_frames(data)]
    options = {
        "qtables": source.quantization,  # type: ignore[attr-defined]
        "subsampling": JpegImagePlugin.get_sampling(source),
    }
    return pillow_frames(saved(edited, "MPO", **options))


def test_an_mpo_keeps_every_picture_equal_to_pillow_frame_by_frame(
    client: Client, no_leftovers: None
) -> None:
    data = mpo()
    out = client.process(data, ["mirror"], grid=(2, 2))
    result = Image.open(io.BytesIO(out))
    assert (result.format, getattr(result, "n_frames", 1)) == ("MPO", 2)
    assert_same_frames(pillow_frames(out), _mpo_reference(data, ["mirror"]))


def test_an_mpo_to_a_single_picture_format_gives_the_first_picture(
    client: Client, no_leftovers: None
) -> None:
    out = client.process(mpo(), ["mirror"], grid=(2, 1), format="PNG")
    frames = pillow_frames(out)
    assert len(frames) == 2  # PNG holds frames: both pictures, as an APNG of the first's size
    png = client.process(mpo(), ["mirror"], grid=(2, 1), format="JPEG")
    assert getattr(Image.open(io.BytesIO(png)), "n_frames", 1) == 1


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_an_avif_sequence_keeps_every_frame_equal_to_pillow_frame_by_frame(
    client: Client, no_leftovers: None
) -> None:
    """Like MPO, a format Pillow writes with save_all: every frame, with its duration."""
    pictures = [_palette(seed).convert("RGB") for seed in range(3)]
    data = saved(pictures, "AVIF", duration=[40, 50, 60])
    out = client.process(data, ["mirror"], grid=(2, 2))
    edited = [pillow(frame, "mirror") for frame in pillow_frames(data)]
    expected = saved(edited, "AVIF", duration=[40, 50, 60])
    assert [f.info.get("duration") for f in pillow_frames(out)] == [40, 50, 60]
    assert_same_frames(pillow_frames(out), pillow_frames(expected))


# ------------------------------------------------------------------ 13: a bomb in a later frame


def test_a_later_gif_frame_pillow_calls_a_bomb_is_image_too_large_before_enqueueing(
    client: Client, messages: Messages, no_leftovers: None
) -> None:
    data = gif_with_frame_size(saved([_palette(s) for s in range(3)], "GIF"), 2, 65_535, 65_535)
    assert Image.open(io.BytesIO(data)).size == (40, 28)  # the header is harmless
    with pytest.raises(ImageTooLarge, match=r"^frame 3 of the GIF image is too large for Pillow"):
        client.process(data, ["mirror"], grid=(2, 2))
    assert messages() == []
    assert_workers_serve_the_next_job(client)


def test_a_later_tiff_page_declared_huge_is_image_too_large_before_enqueueing(
    client: Client, messages: Messages, no_leftovers: None
) -> None:
    data = bytearray(tiff_mixed())
    (ifd,) = struct.unpack_from("<I", data, 4)
    for _ in range(2):  # the third page's directory
        (count,) = struct.unpack_from("<H", data, ifd)
        (ifd,) = struct.unpack_from("<I", data, ifd + 2 + 12 * count)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in (256, 257):
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, 60_000)
    with pytest.raises(ImageTooLarge, match=r"^the first 3 frames of the TIFF image have 3,600,00"):
        client.process(bytes(data), ["mirror"], grid=(2, 2))
    assert messages() == []


# ------------------------------------------------------------------ 14: a damaged PSD


def test_a_psd_with_damaged_layers_is_processed_as_its_composite(client: Client, no_leftovers: None) -> None:
    damaged = psd(layer_box=(4, 2, 1, 7))  # bottom above top: n_frames raises ValueError
    with pytest.raises(ValueError, match="negative tile size"):
        Image.open(io.BytesIO(damaged)).n_frames  # noqa: B018 - Pillow's own failure, pinned
    out = client.process(damaged, ["mirror"], grid=(2, 2), format="PNG")
    expected = pillow(Image.open(io.BytesIO(damaged)).convert("RGB"), "mirror")
    assert Image.open(io.BytesIO(out)).tobytes() == expected.tobytes()
    out = client.process(psd(), ["mirror"], grid=(2, 2), format="TIFF")
    assert len(pillow_frames(out)) == 1  # layers are not frames: the composite, as Image.save


# ------------------------------------------------------------------ 8: no writer


@pytest.mark.parametrize("fmt", ["BUFR", "grib", "hdf5", "wmf"])
def test_a_format_pillow_has_no_writer_for_is_said_so(
    client: Client, messages: Messages, no_leftovers: None, fmt: str
) -> None:
    data = saved([photo(20, 10, seed=1)], "PNG")
    with pytest.raises(
        UnsupportedFormat, match=rf"^Pillow has no writer for {fmt.upper()}; Pillow can write"
    ) as e:
        client.process(data, ["mirror"], format=fmt)
    assert "convert:mode" not in str(e.value) and "BUFR," not in str(e.value) and "GRIB," not in str(e.value)
    assert messages() == []


def _cli_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    path = os.pathsep.join(p for p in (str(SUPPORT), env.get("PYTHONPATH", "")) if p)
    return {
        **env,
        "TILECHORD_PLUGINS": ",".join(PLUGINS),
        "PYTHONPATH": path,
        "TILECHORD_REDIS_URL": redis_url,
    }


def test_the_command_line_says_pillow_has_no_writer(
    redis_url: str, tmp_path: Path, messages: Messages, no_leftovers: None
) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(saved([photo(20, 10, seed=1)], "PNG"))
    for args in (["-o", str(tmp_path / "out.png"), "--format", "bufr"], ["-o", str(tmp_path / "out.grib")]):
        done = tilechord_cli("run", str(source), *args, env=_cli_env(redis_url), cwd=tmp_path)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tilechord: error: Pillow has no writer for "), (
            done.stderr
        )
        assert "convert:mode" not in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    assert messages() == []
