"""How far each neighbourhood operation's Pillow call can look: the reach maths.

A tile cut with a halo at least the reach wide sees every input pixel its core needs, so
its core comes out equal to the whole image's.  The reaches are derived from Pillow's C
code (``libImaging/BoxBlur.c``, ``Filter.c``, ``RankFilter.c``) and checked against
measurements in ``tests/test_filters.py``.  Pillow replicates the image's edge pixels
(blurs, rank filters) or leaves the outer reach-wide border unfiltered (3x3 and 5x5
kernels, which return images smaller than themselves unchanged), so at the image's own
edges a tile has the same edge as the whole image.  ``docs/operations.md`` lists each
operation's reach at its defaults.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "box_blur_reach",
    "box_pass_reach",
    "gaussian_blur_reach",
    "gaussian_box_radius",
    "kernel_reach",
    "rank_reach",
]

#: Pillow's box blur computes in 24-bit fixed point: weights are fractions of 2**24.
_ONE = 1 << 24
#: How close (in pixels) a box radius may come to an integer before we allow for the
#: float rounding of Pillow's C code landing on either side of it.
_NEAR_INTEGER = 1e-3


def _f32(value: float) -> float:
    """*value* rounded to a C ``float``, as Pillow's C code stores it."""
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def gaussian_box_radius(radius: float, passes: int = 3) -> float:
    """The box radius Pillow uses for each of *passes* box blurs approximating a Gaussian.

    A float32 transcription of ``_gaussian_blur_radius`` in ``libImaging/BoxBlur.c``
    (after Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended
    box filtering"); each operation is rounded to float as the C code rounds it.
    """
    f = _f32
    r = f(radius)
    sigma2 = f(f(r * r) / passes)
    big_l = f(math.sqrt(12.0 * sigma2 + 1.0))
    small_l = f(math.floor((big_l - 1.0) / 2.0))
    a = f(f(f(2 * small_l) + 1) * f(f(small_l * f(small_l + 1)) - f(3 * sigma2)))
    a = f(a / f(6 * f(sigma2 - f(f(small_l + 1) * f(small_l + 1)))))
    return f(small_l + a)


@functools.lru_cache(maxsize=4096)
def box_pass_reach(radius: float) -> int:
    """How far one pass of Pillow's box blur of (float32) *radius* can see, in pixels.

    ``ImagingHorizontalBoxBlur`` sums the ``int(radius)`` pixels on each side with the
    weight ``ww = (UINT32)(2**24 / (radius*2 + 1))`` and adds the next pixel on each side
    with the weight ``fw = (2**24 - (2*int(radius)+1)*ww) / 2``; the output is
    ``(sum + 2**23) >> 24``.  A fractional radius makes ``fw`` large, so that far pixel
    shows in the output; ``fw`` is zero for radius 0-4 and a few units for most other
    integral radii, where it can tip a rounding only for large radii (from 104 on).
    Rather than guess, check every window sum: the far pixel is within reach exactly
    when changing it (by up to 255) can carry some sum's rounding over a multiple of 2**24.
    """
    if radius <= 0:
        return 0
    whole = int(radius)
    span = 2 * whole + 1
    ww = int(_f32(_ONE / _f32(2 * radius + 1)))
    fw = _ONE - span * ww
    if fw < 0:  # unsigned wrap-around in C: a huge weight, certainly visible
        return whole + 1
    fw //= 2
    if fw == 0:
        return whole
    lowest_tipping = _ONE - 2 * 255 * fw  # (window sum * ww + 2**23) mod 2**24 from here on
    half = _ONE >> 1
    for total in range(255 * span + 1):
        if (total * ww + half) % _ONE >= lowest_tipping:
            return whole + 1
    return whole


def _computed_pass_reach(radius: float) -> int:
    """:func:`box_pass_reach` of a radius that we computed the way Pillow's C code does.

    Within ``_NEAR_INTEGER`` of an integer n, a compiler that fuses or reorders float
    operations could land on either side of n, so allow for the larger reach: n + 1.
    """
    reach = box_pass_reach(radius)
    nearest = round(radius)
    if nearest > 0 and abs(radius - nearest) < _NEAR_INTEGER:
        reach = max(reach, nearest + 1)
    return reach


def box_blur_reach(params: Mapping[str, Any]) -> int:
    """Reach of ``ImageFilter.BoxBlur(radius)``: one box pass in each direction."""
    return box_pass_reach(_f32(params["radius"]))


def gaussian_blur_reach(params: Mapping[str, Any]) -> int:
    """Reach of ``ImageFilter.GaussianBlur(radius)`` (and of ``UnsharpMask``'s blur).

    Pillow runs three box passes of :func:`gaussian_box_radius` in each direction, each
    pass re-reading the previous one's output, so the reaches add up: three times one
    pass's reach.  Radius 0 is a copy.
    """
    if params["radius"] == 0:
        return 0
    return 3 * _computed_pass_reach(gaussian_box_radius(params["radius"]))


def rank_reach(params: Mapping[str, Any]) -> int:
    """A size x size window centred on the pixel (Pillow replicates the edges)."""
    return int(params["size"]) // 2


def kernel_reach(size: int) -> int:
    """Reach of a size x size convolution kernel (3x3 or 5x5 in Pillow): half its size."""
    return size // 2
