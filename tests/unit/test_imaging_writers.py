"""Formats Pillow cannot write, and frames a writer refuses, said as such (issue #18 item 8), no Redis.

BUFR, GRIB, HDF5 and (off Windows) WMF are in ``Image.SAVE`` with a stub handler that
raises until an application installs one.  Asking for them used to give the advice for a
mode ("cannot hold a mode RGB image ... add a 'convert:mode=RGB' step") on an image that
is RGB already, and the list of writable formats named them.
"""

from __future__ import annotations

import io
import sys
import warnings

import pytest
from PIL import Image

from tilechord.errors import UnsupportedFormat
from tilechord.imaging.encode import check_format, check_frames, format_for_path, normal_format
from tilechord.imaging.writers import PROBE_MODES, has_writer, modes_written, writable_formats

STUBS = ["BUFR", "GRIB", "HDF5"] + ([] if sys.platform == "win32" else ["WMF"])


def _writes(fmt: str, mode: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the IM format is deprecated
            Image.new(mode, (2, 2)).save(io.BytesIO(), fmt)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("fmt", STUBS)
def test_a_format_with_a_stub_writer_is_said_to_have_no_writer(fmt: str) -> None:
    Image.init()
    assert fmt in Image.SAVE  # what made the old check accept it
    for typed in (fmt, fmt.lower()):
        with pytest.raises(
            UnsupportedFormat, match=rf"^Pillow has no writer for {fmt}; Pillow can write "
        ) as caught:
            normal_format(typed)
        assert "convert:mode" not in str(caught.value)
        with pytest.raises(UnsupportedFormat, match=rf"^Pillow has no writer for {fmt};"):
            check_format(typed, "RGB")


@pytest.mark.parametrize(("path", "fmt"), [("out.bufr", "BUFR"), ("out.grib", "GRIB"), ("out.h5", "HDF5")])
def test_an_output_path_of_such_a_format_says_so(path: str, fmt: str) -> None:
    with pytest.raises(
        UnsupportedFormat, match=rf"^Pillow has no writer for {fmt} \(the format of '{path}'\)"
    ):
        format_for_path(path)


def test_a_format_pillow_only_reads_has_no_writer() -> None:
    with pytest.raises(UnsupportedFormat, match=r"^Pillow has no writer for PSD;"):
        normal_format("psd")
    with pytest.raises(UnsupportedFormat, match=r"^Pillow has no writer for PSD \(the format of 'x.psd'\)"):
        format_for_path("x.psd")


def test_the_list_of_writable_formats_names_only_formats_that_write() -> None:
    Image.init()
    listed = writable_formats()
    assert not set(STUBS) & set(listed)
    assert {"PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP", "MPO", "PALM"} <= set(listed)
    for fmt in Image.SAVE:  # each listed one really writes some mode; each other writes none
        assert any(_writes(fmt, mode) for mode in PROBE_MODES) == (fmt in listed), fmt
    with pytest.raises(UnsupportedFormat) as caught:
        normal_format("xyz")
    assert str(caught.value) == f"unknown output format 'xyz'; Pillow can write {', '.join(listed)}"
    assert has_writer("PNG") and not has_writer("BUFR") and not has_writer("NOSUCH")


def test_a_mode_a_format_cannot_hold_gets_advice_it_can_follow() -> None:
    """PALM writes 1 and P only: converting to RGB (the old advice) cannot help an RGB image."""
    with pytest.raises(UnsupportedFormat) as caught:
        check_format("palm", "RGB")
    message = str(caught.value)
    assert message.startswith("PALM cannot hold a mode RGB image")
    assert "'convert:mode=RGB'" not in message
    advised = message.split("'convert:mode=")[1].split("'")[0]
    assert advised in modes_written("PALM")
    assert _writes("PALM", advised)
    with pytest.raises(UnsupportedFormat, match=r"JPEG cannot hold a mode RGBA image .*'convert:mode=RGB'"):
        check_format("jpg", "RGBA")


def test_an_animation_the_writer_refuses_is_refused_naming_what() -> None:
    assert check_frames("tiff", [("RGB", (30, 20)), ("F", (10, 8)), ("L", (50, 40))]) == "TIFF"
    assert check_frames("GIF", [("P", (30, 20)), ("RGBA", (30, 20))]) == "GIF"
    with pytest.raises(UnsupportedFormat, match=r"^WEBP cannot hold these 2 frames \(RGB 30x20, RGB 10x8\)"):
        check_frames("webp", [("RGB", (30, 20)), ("RGB", (10, 8))])
    with pytest.raises(UnsupportedFormat, match=r"^frame 2 of 2: MPO cannot hold a mode P image"):
        check_frames("mpo", [("RGB", (30, 20)), ("P", (10, 8))])
    with pytest.raises(UnsupportedFormat, match=r"^frame 2 of 2: GIF cannot hold a mode CMYK image"):
        check_frames("gif", [("RGB", (4, 4)), ("CMYK", (4, 4))])
