"""Deterministic test images, and the plain single-process Pillow job they are compared with."""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps, JpegImagePlugin

JPEG_QUALITY = 90

PillowEdit = Callable[[Image.Image], Image.Image]

# The Pillow call each tilechord operation makes (see docs/operations.md).
PILLOW_EDITS: dict[str, PillowEdit] = {
    "median:size=5": lambda im: im.filter(ImageFilter.MedianFilter(5)),
    "gaussian_blur:radius=8": lambda im: im.filter(ImageFilter.GaussianBlur(8)),
    "invert": ImageOps.invert,
    "sharpen": lambda im: im.filter(ImageFilter.SHARPEN),
}


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic photo-like RGB image: gradients, shapes, fine noise, softened.

    Everything comes from Pillow's deterministic drawing and from ``random.Random(seed)``
    (never C ``rand()``), so the same arguments give the same pixels on every run.
    """
    rng = random.Random(seed)
    size = (width, height)
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
        ),
    )
    draw = ImageDraw.Draw(base)
    for _ in range(min(400, max(3, width * height // 60_000))):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1 = x0 + rng.randrange(1, max(2, width // 3))
        y1 = y0 + rng.randrange(1, max(2, height // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), outline=colour, width=3)
    noise = Image.frombytes("L", size, rng.randbytes(width * height)).convert("RGB")
    return Image.blend(base, noise, 0.12).filter(ImageFilter.SMOOTH)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def megapixels(size: tuple[int, int]) -> str:
    return f"{size[0] * size[1] / 1e6:.1f} MP ({size[0]}x{size[1]})"


def jpeg_options(source: Image.Image, image: Image.Image) -> dict[str, Any]:
    """The JPEG options tilechord's encoder picks for a JPEG input, spelled out for Pillow.

    Written out here rather than imported, so that the baseline is plain Pillow: if
    tilechord's choice ever drifts, the byte-for-byte check of every case says so.
    """
    options: dict[str, Any] = {}
    info = source.info
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if info.get("exif"):
        options["exif"] = info["exif"]
    if "dpi" in info:
        options["dpi"] = info["dpi"]
    if source.format == "JPEG" and image.mode == source.mode:
        options["qtables"] = source.quantization  # type: ignore[attr-defined]
        sampling = JpegImagePlugin.get_sampling(source)
        if sampling != -1:
            options["subsampling"] = sampling
    else:
        options["quality"] = 95
    return options


def pillow_job(data: bytes, edit: PillowEdit) -> bytes:
    """The whole job in one process: decode the JPEG bytes, edit, encode a JPEG."""
    source = Image.open(io.BytesIO(data))
    source.load()
    out = edit(source)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", **jpeg_options(source, out))
    return buffer.getvalue()


def same_output(ours: bytes, theirs: bytes) -> str:
    """``identical bytes``, ``identical pixels`` or ``DIFFERENT ...``."""
    if ours == theirs:
        return "identical bytes"
    a, b = Image.open(io.BytesIO(ours)), Image.open(io.BytesIO(theirs))
    if a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes():
        return "identical pixels"
    return f"DIFFERENT: tilechord {a.mode} {a.size}, Pillow {b.mode} {b.size}"
