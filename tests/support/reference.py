"""The one table of Pillow references: each built-in operation as its whole-image Pillow call.

Written from ``../shared/ops-reference.md`` (plus ``convert``, which never dithers, as the
README says), independently of tilechord's own operation functions: nothing here imports
tilechord.  Every test that compares tilechord with Pillow takes its expected image from
:func:`reference` (or :func:`pillow` for one step), so a reference is written once.

A spec is what tilechord accepts: ``"name"``, ``"name:key=value,key=value"`` or
``(name, {key: value})``.  Parameters a spec leaves out take the defaults of
ops-reference.md, which are Pillow's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

Spec = str | tuple[str, Mapping[str, Any]]
Reference = Callable[..., Image.Image]

#: The nine fixed 3x3 kernels: ``im.filter(ImageFilter.<NAME>)``.
KERNELS = (
    "sharpen", "smooth", "smooth_more", "detail", "edge_enhance", "edge_enhance_more",
    "emboss", "find_edges", "contour",
)  # fmt: skip
RANK_FILTERS = ("median", "min", "max")

#: Exceptions by which Pillow refuses an image mode (or a conversion).
PILLOW_REFUSALS = (ValueError, OSError, TypeError, NotImplementedError)

_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _kernel(name: str) -> Reference:
    kernel = getattr(ImageFilter, name.upper())
    return lambda im: im.filter(kernel)


#: Operation name -> the Pillow call of ops-reference.md, with its parameters and defaults.
PILLOW: dict[str, Reference] = {
    "grayscale": lambda im: ImageOps.grayscale(im),
    "invert": lambda im: ImageOps.invert(im),
    "posterize": lambda im, bits=4: ImageOps.posterize(im, bits),
    "solarize": lambda im, threshold=128: ImageOps.solarize(im, threshold),
    "brightness": lambda im, factor=1.0: ImageEnhance.Brightness(im).enhance(factor),
    "color": lambda im, factor=1.0: ImageEnhance.Color(im).enhance(factor),
    # README: convert never dithers (dithering carries error from pixel to pixel, across tiles).
    "convert": lambda im, mode="RGB": im.convert(mode, dither=Image.Dither.NONE),
    "gaussian_blur": lambda im, radius=2: im.filter(ImageFilter.GaussianBlur(radius)),
    "box_blur": lambda im, radius=2: im.filter(ImageFilter.BoxBlur(radius)),
    "unsharp_mask": lambda im, radius=2, percent=150, threshold=3: im.filter(
        ImageFilter.UnsharpMask(radius, percent, threshold)
    ),
    "median": lambda im, size=3: im.filter(ImageFilter.MedianFilter(size)),
    "min": lambda im, size=3: im.filter(ImageFilter.MinFilter(size)),
    "max": lambda im, size=3: im.filter(ImageFilter.MaxFilter(size)),
    "sharpness": lambda im, factor=1.0: ImageEnhance.Sharpness(im).enhance(factor),
    **{name: _kernel(name) for name in KERNELS},
    "mirror": lambda im: ImageOps.mirror(im),
    "flip": lambda im: ImageOps.flip(im),
    "rotate": lambda im, angle=90: im.transpose(_ROTATIONS[angle]),
    "contrast": lambda im, factor=1.0: ImageEnhance.Contrast(im).enhance(factor),
    "autocontrast": lambda im, cutoff=0: ImageOps.autocontrast(im, cutoff),
    "equalize": lambda im: ImageOps.equalize(im),
}


#: Parameters whose values are text even where they look like numbers (``convert:mode=1``).
TEXT_PARAMS = {("convert", "mode")}


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(spec: Spec) -> tuple[str, dict[str, Any]]:
    """``"name:key=value,..."`` or ``(name, params)`` as a name and its parameters (numbers parsed)."""
    if not isinstance(spec, str):
        name, params = spec
        return name, dict(params)
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, rest.split(",")):
        key, _, text = item.partition("=")
        key, text = key.strip(), text.strip()
        params[key] = text if (name.strip(), key) in TEXT_PARAMS else _value(text)
    return name.strip(), params


def pillow(image: Image.Image, spec: Spec) -> Image.Image:
    """One step as Pillow runs it on the whole image (Pillow's own errors propagate)."""
    name, params = parse_spec(spec)
    return PILLOW[name](image, **params)


def reference(image: Image.Image, specs: Iterable[Spec]) -> Image.Image:
    """A pipeline as Pillow runs it: the steps' calls chained on the whole image."""
    for spec in specs:
        image = pillow(image, spec)
    return image


def refused_by_design(spec: Spec, mode: str) -> bool:
    """Where Pillow works on a whole image but tilechord refuses, as its docs say.

    RGBA to P or PA quantizes the whole image (no tile can know the palette), and the
    kernels and rank filters, which Pillow refuses on P, silently drop a PA palette.
    """
    name, params = parse_spec(spec)
    if name == "convert" and mode == "RGBA" and params.get("mode", "RGB") in ("P", "PA"):
        return True
    return mode == "PA" and name in KERNELS + RANK_FILTERS


def reference_or_none(image: Image.Image, specs: Iterable[Spec]) -> Image.Image | None:
    """The pipeline's reference, or None where a step is refused (by Pillow, or by design)."""
    for spec in specs:
        if refused_by_design(spec, image.mode):
            return None
        try:
            image = pillow(image, spec)
        except PILLOW_REFUSALS:
            return None
    return image


def same_image(a: Image.Image, b: Image.Image) -> bool:
    """Same mode, size and bytes, and the same palette where there is one."""
    if (a.mode, a.size) != (b.mode, b.size) or a.tobytes() != b.tobytes():
        return False
    return a.mode not in ("P", "PA") or a.getpalette() == b.getpalette()
