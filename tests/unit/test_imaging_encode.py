"""Format names: one spelling rule, shared by the library and the command line."""

from __future__ import annotations

import pytest
from PIL import Image

from tilechord.errors import UnsupportedFormat
from tilechord.imaging.encode import check_format, normal_format
from tilechord.imaging.writers import writable_formats


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("jpg", "JPEG"),
        ("JPG", "JPEG"),
        ("jpeg", "JPEG"),
        ("tif", "TIFF"),
        ("Tiff", "TIFF"),
        ("png", "PNG"),
        ("webp", "WEBP"),
        ("gif", "GIF"),
    ],
)
def test_normal_format_gives_pillows_name(typed: str, name: str) -> None:
    assert normal_format(typed) == name


def test_every_format_pillow_writes_is_its_own_normal_form() -> None:
    formats = writable_formats()
    assert "PNG" in formats and "JPEG" in formats
    assert all(normal_format(fmt) == fmt for fmt in formats)


def test_a_format_with_only_a_stub_writer_is_refused_as_such() -> None:
    Image.init()
    stubs = sorted(set(Image.SAVE) - set(writable_formats()))
    assert "BUFR" in stubs  # registered in Image.SAVE, but its handler cannot write
    with pytest.raises(UnsupportedFormat, match="Pillow has no writer for BUFR"):
        normal_format("bufr")


@pytest.mark.parametrize("typed", ["xyz", "", "jpgg", ".png"])
def test_an_unknown_format_is_refused_naming_what_pillow_can_write(typed: str) -> None:
    with pytest.raises(UnsupportedFormat) as caught:
        normal_format(typed)
    known = ", ".join(writable_formats())
    assert str(caught.value) == f"unknown output format {typed!r}; Pillow can write {known}"


def test_check_format_spells_as_normal_format_and_refuses_alike() -> None:
    assert check_format("jpg", "RGB") == "JPEG"
    with pytest.raises(UnsupportedFormat) as by_check:
        check_format("xyz", "RGB")
    with pytest.raises(UnsupportedFormat) as by_normal:
        normal_format("xyz")
    assert str(by_check.value) == str(by_normal.value)


def test_check_format_refuses_a_mode_the_writer_cannot_hold() -> None:
    with pytest.raises(UnsupportedFormat, match=r"JPEG cannot hold a mode RGBA image"):
        check_format("jpg", "RGBA")
