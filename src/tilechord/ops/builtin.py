"""The built-in operations: one Pillow call each, registered with :func:`operation`.

Every function makes exactly the Pillow call it names (``pillow=``, listed with the rest
in ``docs/operations.md``), so the whole-image result is Pillow's own, with two
deliberate refusals and one documented choice: ``convert`` never dithers (to 1 and P)
and refuses RGBA to P/PA (a whole-image quantization), for the sake of tiling; kernels
and rank filters refuse PA, whose Pillow result has lost its palette (it comes out black).

What makes the tiled result equal to the whole-image one is each neighbourhood
operation's *reach*, derived from Pillow's C code in :mod:`.reach`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ..errors import InvalidParameter, UnsupportedMode
from .reach import (
    box_blur_reach,
    box_pass_reach,
    gaussian_blur_reach,
    gaussian_box_radius,
    kernel_reach,
    rank_reach,
)
from .registry import Box, Kind, Size, operation

__all__ = [
    "CONVERT_MODES",
    "box_blur_reach",
    "box_pass_reach",
    "gaussian_blur_reach",
    "gaussian_box_radius",
]

#: Blur radii (Pillow's float radius, in pixels) that an operation accepts.
MAX_RADIUS = 200
#: Odd window sizes of the rank filters (median, min, max).
RANK_SIZES = tuple(range(1, 16, 2))
#: Enhancement factors: 0 degenerates fully, 1 is the identity, above 1 extrapolates.
MAX_FACTOR = 100
#: What the kernels and rank filters refuse beyond Pillow (which refuses P itself), and why.
PALETTE = (
    "PA: Pillow filters its palette indices as grey levels and returns no palette, so the "
    "result saves black; use convert:mode=RGBA first (P: Pillow refuses too)"
)
#: Every mode Pillow 13 can convert an image to (``Image.convert``).
CONVERT_MODES = (
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
    "LAB", "HSV", "I", "F", "I;16", "I;16L", "I;16B", "I;16N",
)  # fmt: skip


# ------------------------------------------------------------------------ geometry


def _mirror_box(box: Box, size: Size, params: Mapping[str, Any]) -> Box:
    x0, y0, x1, y1 = box
    width, _ = size
    return (width - x1, y0, width - x0, y1)


def _flip_box(box: Box, size: Size, params: Mapping[str, Any]) -> Box:
    x0, y0, x1, y1 = box
    _, height = size
    return (x0, height - y1, x1, height - y0)


def _rotate_box(box: Box, size: Size, params: Mapping[str, Any]) -> Box:
    """Where *box* lands after a counter-clockwise rotation by ``angle`` degrees."""
    x0, y0, x1, y1 = box
    width, height = size
    angle = params["angle"]
    if angle == 90:  # (x, y) -> (y, W-1-x)
        return (y0, width - x1, y1, width - x0)
    if angle == 180:  # (x, y) -> (W-1-x, H-1-y)
        return (width - x1, height - y1, width - x0, height - y0)
    if angle == 270:  # (x, y) -> (H-1-y, x)
        return (height - y1, x0, height - y0, x1)
    raise InvalidParameter(f"rotate:angle must be one of 90, 180, 270, not {angle!r}")


def _same_size(size: Size, params: Mapping[str, Any]) -> Size:
    return size


def _rotate_size(size: Size, params: Mapping[str, Any]) -> Size:
    width, height = size
    return (height, width) if params["angle"] in (90, 270) else (width, height)


_TRANSPOSE = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


# --------------------------------------------------------------------------- pixel


@operation("grayscale", kind=Kind.PIXEL, pillow="ImageOps.grayscale(im)")
def grayscale(image: Image.Image) -> Image.Image:
    """Drop the colour: convert to 8-bit grey (mode L) with the ITU-R 601-2 luma weights."""
    return ImageOps.grayscale(image)


@operation("invert", kind=Kind.PIXEL, pillow="ImageOps.invert(im)")
def invert(image: Image.Image) -> Image.Image:
    """Make a negative: every channel value v becomes 255 - v."""
    return ImageOps.invert(image)


@operation("posterize", kind=Kind.PIXEL, pillow="ImageOps.posterize(im, bits)", bounds={"bits": (1, 8)})
def posterize(image: Image.Image, bits: int = 4) -> Image.Image:
    """Flatten colours into bands: keep only the highest bits of each channel (1 to 8 of them)."""
    return ImageOps.posterize(image, bits)


@operation(
    "solarize", kind=Kind.PIXEL, pillow="ImageOps.solarize(im, threshold)", bounds={"threshold": (0, 255)}
)
def solarize(image: Image.Image, threshold: int = 128) -> Image.Image:
    """Give a darkroom solarisation look: invert every channel value at or above the threshold."""
    return ImageOps.solarize(image, threshold)


@operation(
    "brightness",
    kind=Kind.PIXEL,
    pillow="ImageEnhance.Brightness(im).enhance(factor)",
    bounds={"factor": (0, MAX_FACTOR)},
)
def brightness(image: Image.Image, factor: float = 1.0) -> Image.Image:
    """Darken or brighten: 0 gives black, 1 the original, 2 twice as bright."""
    return ImageEnhance.Brightness(image).enhance(factor)


@operation(
    "color",
    kind=Kind.PIXEL,
    pillow="ImageEnhance.Color(im).enhance(factor)",
    bounds={"factor": (0, MAX_FACTOR)},
)
def color(image: Image.Image, factor: float = 1.0) -> Image.Image:
    """Fade or boost saturation: 0 gives greys, 1 the original, above 1 stronger colours."""
    return ImageEnhance.Color(image).enhance(factor)


@operation(
    "convert",
    kind=Kind.PIXEL,
    pillow="im.convert(mode, dither=Image.Dither.NONE)",
    refuses="RGBA to P or PA: Pillow quantizes the whole image for it",
    choices={"mode": CONVERT_MODES},
)
def convert(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Change the pixel format, e.g. to RGB so that filters accept palette (P) images.

    Converting to 1 or P thresholds or picks the nearest web-palette colour pixel by
    pixel (``dither=Image.Dither.NONE``): Pillow's default Floyd-Steinberg dithering
    carries each pixel's error to all the pixels after it, which no tile can reproduce.
    RGBA to P or PA is refused, because Pillow quantizes the whole image for it.
    """
    if image.mode == "RGBA" and mode in ("P", "PA"):
        raise ValueError(f"RGBA to {mode} quantizes the whole image, which tiles cannot share")
    return image.convert(mode, dither=Image.Dither.NONE)


# ------------------------------------------------------------------- neighbourhood


@operation(
    "gaussian_blur",
    reach=gaussian_blur_reach,
    pillow="im.filter(ImageFilter.GaussianBlur(radius))",
    bounds={"radius": (0, MAX_RADIUS)},
)
def gaussian_blur(image: Image.Image, radius: float = 2) -> Image.Image:
    """Soften the image with a Gaussian blur whose standard deviation is radius pixels."""
    return image.filter(ImageFilter.GaussianBlur(radius))


@operation(
    "box_blur",
    reach=box_blur_reach,
    pillow="im.filter(ImageFilter.BoxBlur(radius))",
    bounds={"radius": (0, MAX_RADIUS)},
)
def box_blur(image: Image.Image, radius: float = 2) -> Image.Image:
    """Blur evenly: average each pixel with its neighbours up to radius pixels away (fractions too)."""
    return image.filter(ImageFilter.BoxBlur(radius))


@operation(
    "unsharp_mask",
    reach=gaussian_blur_reach,
    pillow="im.filter(ImageFilter.UnsharpMask(radius, percent, threshold))",
    bounds={"radius": (0, MAX_RADIUS), "percent": (0, 1000), "threshold": (0, 255)},
)
def unsharp_mask(
    image: Image.Image, radius: float = 2, percent: int = 150, threshold: int = 3
) -> Image.Image:
    """Sharpen detail: amplify by percent % each difference from a Gaussian blur of at least threshold."""
    return image.filter(ImageFilter.UnsharpMask(radius, percent, threshold))


def _refuse_palette(op: str, image: Image.Image) -> None:
    """Refuse PA: Pillow's filter of it is an image without colours (Pillow refuses P itself).

    ``Image.filter`` runs a kernel or rank filter on each band, the palette indices
    as if they were grey levels, and the result has no palette: a kernel's keeps only
    a Python copy that nothing reads, a rank filter's an empty one, so it saves and
    converts as black (tests/unit/test_ops_pa.py checks this on Pillow).  Tiles could
    not even equal that: one smaller than a kernel comes back unfiltered, palette and
    all.  PA to RGBA is a pixel operation, so converting first tiles like any RGBA.
    """
    if image.mode == "PA":
        raise UnsupportedMode(
            f"{op} cannot work on mode PA images: Pillow would filter the palette indices as "
            "grey levels and drop the palette, leaving a black image; convert the image first, "
            "e.g. with the step 'convert:mode=RGBA'"
        )


def _check_odd(op: str, size: int) -> None:
    if size % 2 == 0:
        raise InvalidParameter(f"{op}:size must be odd (a window centred on the pixel), not {size}")


@operation(
    "median",
    reach=rank_reach,
    pillow="im.filter(ImageFilter.MedianFilter(size))",
    refuses=PALETTE,
    choices={"size": RANK_SIZES},
)
def median(image: Image.Image, size: int = 3) -> Image.Image:
    """Remove speckle noise: each pixel becomes the median of its size x size neighbourhood."""
    _check_odd("median", size)
    _refuse_palette("median", image)
    return image.filter(ImageFilter.MedianFilter(size))


@operation(
    "min",
    reach=rank_reach,
    pillow="im.filter(ImageFilter.MinFilter(size))",
    refuses=PALETTE,
    choices={"size": RANK_SIZES},
)
def min_filter(image: Image.Image, size: int = 3) -> Image.Image:
    """Grow dark areas (erode): each pixel becomes the darkest of its size x size neighbourhood."""
    _check_odd("min", size)
    _refuse_palette("min", image)
    return image.filter(ImageFilter.MinFilter(size))


@operation(
    "max",
    reach=rank_reach,
    pillow="im.filter(ImageFilter.MaxFilter(size))",
    refuses=PALETTE,
    choices={"size": RANK_SIZES},
)
def max_filter(image: Image.Image, size: int = 3) -> Image.Image:
    """Grow light areas (dilate): each pixel becomes the lightest of its size x size neighbourhood."""
    _check_odd("max", size)
    _refuse_palette("max", image)
    return image.filter(ImageFilter.MaxFilter(size))


@operation(
    "sharpness",
    reach=1,
    pillow="ImageEnhance.Sharpness(im).enhance(factor)",
    bounds={"factor": (0, MAX_FACTOR)},
)
def sharpness(image: Image.Image, factor: float = 1.0) -> Image.Image:
    """Blur or sharpen edges: 0 gives a smoothed image, 1 the original, 2 a sharpened one."""
    return ImageEnhance.Sharpness(image).enhance(factor)


def _kernel_operation(
    name: str, kernel: type[ImageFilter.BuiltinFilter], doc: str
) -> Callable[..., Image.Image]:
    """Register Pillow's built-in kernel *kernel* as *name*; its reach is half its size."""
    size = kernel.filterargs[0][0]

    def apply(image: Image.Image) -> Image.Image:
        _refuse_palette(name, image)
        return image.filter(kernel)

    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = doc
    pillow = f"im.filter(ImageFilter.{kernel.__name__})"
    return operation(name, reach=kernel_reach(size), pillow=pillow, refuses=PALETTE)(apply)


sharpen = _kernel_operation(
    "sharpen", ImageFilter.SHARPEN, "Crisp up edges a little (Pillow's 3x3 SHARPEN kernel)."
)
smooth = _kernel_operation(
    "smooth", ImageFilter.SMOOTH, "Soften noise a little (Pillow's 3x3 SMOOTH kernel)."
)
smooth_more = _kernel_operation(
    "smooth_more", ImageFilter.SMOOTH_MORE, "Soften noise more (Pillow's 5x5 SMOOTH_MORE kernel)."
)
detail = _kernel_operation(
    "detail", ImageFilter.DETAIL, "Bring out fine detail (Pillow's 3x3 DETAIL kernel)."
)
edge_enhance = _kernel_operation(
    "edge_enhance",
    ImageFilter.EDGE_ENHANCE,
    "Stress the edges between regions (Pillow's 3x3 EDGE_ENHANCE kernel).",
)
edge_enhance_more = _kernel_operation(
    "edge_enhance_more",
    ImageFilter.EDGE_ENHANCE_MORE,
    "Stress the edges strongly (Pillow's 3x3 EDGE_ENHANCE_MORE kernel).",
)
emboss = _kernel_operation(
    "emboss", ImageFilter.EMBOSS, "Make the image look stamped in relief, on grey (3x3 EMBOSS)."
)
find_edges = _kernel_operation(
    "find_edges",
    ImageFilter.FIND_EDGES,
    "Keep only the edges, light on black (Pillow's 3x3 FIND_EDGES kernel).",
)
contour = _kernel_operation(
    "contour", ImageFilter.CONTOUR, "Draw the outlines, dark on white (Pillow's 3x3 CONTOUR kernel)."
)


# ------------------------------------------------------------------------ geometry


@operation(
    "mirror", kind=Kind.GEOMETRY, pillow="ImageOps.mirror(im)", map_box=_mirror_box, map_size=_same_size
)
def mirror(image: Image.Image) -> Image.Image:
    """Flip left to right, as seen in a mirror."""
    return ImageOps.mirror(image)


@operation("flip", kind=Kind.GEOMETRY, pillow="ImageOps.flip(im)", map_box=_flip_box, map_size=_same_size)
def flip(image: Image.Image) -> Image.Image:
    """Flip top to bottom, upside down."""
    return ImageOps.flip(image)


@operation(
    "rotate",
    kind=Kind.GEOMETRY,
    pillow='im.transpose(Image.Transpose[f"ROTATE_{angle}"])',
    choices={"angle": tuple(_TRANSPOSE)},
    map_box=_rotate_box,
    map_size=_rotate_size,
)
def rotate(image: Image.Image, angle: int = 90) -> Image.Image:
    """Turn the image a quarter, half or three quarters counter-clockwise (exact, no resampling)."""
    return image.transpose(_TRANSPOSE[angle])
