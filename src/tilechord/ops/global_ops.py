"""The global operations: each needs a statistic of the whole image, not just a tile.

``contrast`` blends with the image's mean grey; ``autocontrast`` and ``equalize`` map
levels through a table built from the image's histogram.  Every one of those statistics
follows from the whole image's histogram, and a histogram is additive: the tiles'
histograms (of their cores, which partition the image) add up to the image's.  So a job
runs a global step in two moves (see :mod:`tilechord.worker.tasks`): each tile *measures* its
histogram, the job adds them up, and each tile then *applies* the step with the sum.
Their Pillow calls are listed with the others' in ``docs/operations.md``.

Applying is done by Pillow's own code wherever it can be: ``ImageOps`` builds its
lookup table from ``image.histogram()``, so handing it a tile whose ``histogram()``
answers for the whole image makes Pillow compute the whole image's table, exactly.
``ImageEnhance.Contrast`` converts to ``L`` first, which would lose that answer, so its
five lines are mirrored below; ``tests/test_global_ops.py`` holds both to Pillow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageEnhance, ImageOps, ImageStat

from .registry import Histogram, Kind, operation

__all__ = ["contrast", "autocontrast", "equalize"]

#: Enhancement factors: 0 degenerates fully, 1 is the identity, above 1 extrapolates.
MAX_FACTOR = 100


def _seen_whole(tile: Image.Image, histogram: Histogram) -> Image.Image:
    """A copy of *tile* whose ``histogram()`` is the whole image's."""
    stand_in = tile.copy()

    def whole_histogram(mask: Image.Image | None = None, extrema: Any = None) -> Histogram:
        if mask is not None:
            raise ValueError("a tile cannot stand in for a masked histogram")
        return list(histogram)

    stand_in.histogram = whole_histogram  # type: ignore[method-assign]
    return stand_in


# ------------------------------------------------------------------------- contrast


def _grey_histogram(image: Image.Image, _params: Mapping[str, Any]) -> Histogram:
    return (image if image.mode == "L" else image.convert("L")).histogram()


def _contrast_with(image: Image.Image, histogram: Histogram, params: Mapping[str, Any]) -> Image.Image:
    # ImageEnhance.Contrast.__init__ and enhance(), with the whole image's mean grey.
    mean = int(ImageStat.Stat(histogram).mean[0] + 0.5)
    degenerate = Image.new("L", image.size, mean)
    if degenerate.mode != image.mode:
        degenerate = degenerate.convert(image.mode)
    if "A" in image.getbands():
        degenerate.putalpha(image.getchannel("A"))
    return Image.blend(degenerate, image, params["factor"])


@operation(
    "contrast",
    kind=Kind.GLOBAL,
    pillow="ImageEnhance.Contrast(im).enhance(factor)",
    bounds={"factor": (0, MAX_FACTOR)},
    measure=_grey_histogram,
    apply_measured=_contrast_with,
)
def contrast(image: Image.Image, factor: float = 1.0) -> Image.Image:
    """Scale contrast about the image's mean grey: 0 is flat grey, 1 the original."""
    return ImageEnhance.Contrast(image).enhance(factor)


# --------------------------------------------------------------------- autocontrast


def _histogram(image: Image.Image, _params: Mapping[str, Any]) -> Histogram:
    return image.histogram()


def _autocontrast_with(image: Image.Image, histogram: Histogram, params: Mapping[str, Any]) -> Image.Image:
    return ImageOps.autocontrast(_seen_whole(image, histogram), params["cutoff"])


@operation(
    "autocontrast",
    kind=Kind.GLOBAL,
    pillow="ImageOps.autocontrast(im, cutoff)",
    bounds={"cutoff": (0, 49)},
    measure=_histogram,
    apply_measured=_autocontrast_with,
)
def autocontrast(image: Image.Image, cutoff: float = 0) -> Image.Image:
    """Stretch levels so the darkest become black and the lightest white (cutoff: % ignored at each end)."""
    return ImageOps.autocontrast(image, cutoff)


# ------------------------------------------------------------------------- equalize


def _as_equalized(image: Image.Image) -> Image.Image:
    return image.convert("RGB") if image.mode == "P" else image  # as ImageOps.equalize does


def _equalize_histogram(image: Image.Image, _params: Mapping[str, Any]) -> Histogram:
    return _as_equalized(image).histogram()


def _equalize_with(image: Image.Image, histogram: Histogram, _params: Mapping[str, Any]) -> Image.Image:
    return ImageOps.equalize(_seen_whole(_as_equalized(image), histogram))


@operation(
    "equalize",
    kind=Kind.GLOBAL,
    pillow="ImageOps.equalize(im)",
    measure=_equalize_histogram,
    apply_measured=_equalize_with,
)
def equalize(image: Image.Image) -> Image.Image:
    """Spread levels so that each is about equally common (histogram equalisation)."""
    return ImageOps.equalize(image)
