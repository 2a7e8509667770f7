"""The Pillow internals tilechord's header open relies on, pinned so a new Pillow fails loudly.

:func:`tilechord.imaging.decode._open_unchecked` reads a header Pillow refuses for its
size the way ``Image.open`` does, minus that one check, instead of lifting the
process-wide ``Image.MAX_IMAGE_PIXELS``.  That is only right while ``Image.open`` works
as in Pillow 13: plugins in ``Image.OPEN`` as ``(factory, accept)``, tried in the order
of ``Image.ID``, the size checked once after a factory returns.  If a test here fails,
re-read ``Image.open`` and ``_open_core`` and bring ``_open_unchecked`` in line.
"""

from __future__ import annotations

import inspect
import io
import warnings

import pytest
from PIL import Image, UnidentifiedImageError

from tilechord.imaging.decode import _open_unchecked

REREAD = "Pillow's Image.open changed: re-read it and update tilechord.imaging.decode._open_unchecked"


def _readable_formats() -> list[str]:
    """Every format this Pillow can both write and read, for a sample file of each."""
    Image.init()
    return sorted(set(Image.SAVE) & set(Image.OPEN))


def _sample(fmt: str, frames: int = 1) -> bytes | None:
    """A small file in *fmt*, in the first mode its writer takes; ``None`` if none."""
    for mode in ("RGB", "L", "P", "1"):
        images = [Image.new(mode, (32, 24), i) for i in range(frames)]
        buffer = io.BytesIO()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # the IM format is deprecated
                images[0].save(buffer, fmt, save_all=frames > 1, append_images=images[1:])
        except (OSError, ValueError, KeyError):
            continue
        return buffer.getvalue()
    return None


def test_image_open_still_works_as_open_unchecked_copies_it() -> None:
    source = inspect.getsource(Image.open)
    for line in (
        "for loader in (preinit, init):",
        "factory, accept = OPEN[i]",
        "result = not accept or accept(prefix)",
        "if isinstance(result, str):",
        "im = factory(fp, filename)",
        "_decompression_bomb_check(im.size)",
        "except (SyntaxError, IndexError, TypeError, struct.error) as e:",
    ):
        assert line in source, f"{REREAD} (no longer has {line!r})"
    assert source.count("_decompression_bomb_check") == 1, REREAD


def test_the_plugin_registry_has_the_shape_open_unchecked_reads() -> None:
    Image.init()
    assert Image.ID and set(Image.ID) == set(Image.OPEN), REREAD
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        assert callable(factory) and (accept is None or callable(accept)), REREAD


def test_pillows_limit_is_its_module_global() -> None:
    """Image.open refuses through the global, so it is what tilechord must leave alone."""
    params = inspect.signature(Image._decompression_bomb_check).parameters
    assert list(params) == ["size", "error_only"], REREAD
    assert "MAX_IMAGE_PIXELS" in inspect.getsource(Image._decompression_bomb_check), REREAD


@pytest.mark.parametrize(
    ("fmt", "frames"),
    [(fmt, 1) for fmt in _readable_formats()] + [(fmt, 3) for fmt in ("GIF", "PNG", "TIFF", "WEBP", "MPO")],
)
def test_open_unchecked_reads_every_format_as_image_open_does(fmt: str, frames: int) -> None:
    data = _sample(fmt, frames)
    if data is None:
        pytest.skip(f"this Pillow cannot write a small {fmt} file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the IM format is deprecated
        expected = Image.open(io.BytesIO(data))
        opened = _open_unchecked(io.BytesIO(data))
    assert type(opened) is type(expected)
    assert (opened.format, opened.mode, opened.size) == (expected.format, expected.mode, expected.size)
    assert getattr(opened, "n_frames", 1) == getattr(expected, "n_frames", 1)
    assert opened.info.keys() == expected.info.keys()


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\nbroken"])
def test_open_unchecked_refuses_what_image_open_refuses(data: bytes) -> None:
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(data))
    with pytest.raises(UnidentifiedImageError):
        _open_unchecked(io.BytesIO(data))
