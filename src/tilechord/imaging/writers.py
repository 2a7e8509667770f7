"""Which output formats Pillow really writes, and which modes each one holds: asked of Pillow.

``Image.SAVE`` also lists formats whose plugin is only a stub (BUFR, GRIB, HDF5, and WMF
off Windows): their handler raises "save handler not installed" until the application
registers one.  Listing or accepting those would send a user down the wrong path, so a
format counts as writable only once Pillow has saved a tiny image in it.  A format found
writable stays so (cached per process); a refusal is asked again next time, since it
costs next to nothing and a program may register a handler later.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

from PIL import Image

__all__ = ["PROBE_MODES", "has_writer", "writable_formats", "modes_written", "probe_frames"]

#: The modes tried, in the order a writer's advice prefers them ("convert to RGB" first).
PROBE_MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F")

_WRITABLE: set[str] = set()
_MODES: dict[str, tuple[str, ...]] = {}


def _save(frames: Sequence[Image.Image], fmt: str) -> None:
    """Save *frames* (``save_all`` when more than one) into memory; Pillow's error propagates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(frames) == 1:
            frames[0].save(io.BytesIO(), fmt)
        else:
            frames[0].save(io.BytesIO(), fmt, save_all=True, append_images=list(frames[1:]))


def _saves(fmt: str, mode: str) -> bool:
    """Whether Pillow writes a 2x2 image of *mode* as *fmt*."""
    try:
        _save([Image.new(mode, (2, 2))], fmt)
    except Exception:  # any refusal, by any plugin, means "not this mode"
        return False
    return True


def has_writer(fmt: str) -> bool:
    """Whether *fmt* (Pillow's name) has a save handler that writes at least one mode."""
    if fmt in _WRITABLE:
        return True
    Image.init()
    if fmt not in Image.SAVE or not any(_saves(fmt, mode) for mode in PROBE_MODES):
        return False
    _WRITABLE.add(fmt)
    return True


def writable_formats() -> list[str]:
    """Every format Pillow can write here, sorted: what a refusal lists as the choices."""
    Image.init()
    return sorted(fmt for fmt in Image.SAVE if has_writer(fmt))


def modes_written(fmt: str) -> tuple[str, ...]:
    """The modes of :data:`PROBE_MODES` that *fmt* writes, in that order (for advice)."""
    if fmt not in _MODES:
        modes = tuple(mode for mode in PROBE_MODES if _saves(fmt, mode))
        if not modes:
            return ()
        _MODES[fmt] = modes
    return _MODES[fmt]


def _ranks(values: Sequence[int]) -> dict[int, int]:
    return {value: rank for rank, value in enumerate(sorted(set(values)))}


def probe_frames(fmt: str, frames: Sequence[tuple[str, tuple[int, int]]]) -> None:
    """Save tiny frames standing for an animation's (mode, size) in order; Pillow's error propagates.

    Writers refuse some sequences outright (WebP and AVIF frames of different sizes, a
    CMYK frame in a GIF, a palette frame in an MPO).  The probe's sizes keep the real
    ones' order and equalities, which is all those checks look at, without the cost of
    encoding full-size frames.
    """
    widths = _ranks([size[0] for _, size in frames])
    heights = _ranks([size[1] for _, size in frames])
    _save([Image.new(mode, (2 + widths[w], 2 + heights[h])) for mode, (w, h) in frames], fmt)
