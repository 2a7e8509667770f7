"""Deterministic, photo-like test images (gradients, shapes and noise), in any mode."""

from __future__ import annotations

import array
import io
import random

from PIL import Image, ImageDraw, ImageFilter


def photo(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """An image with smooth areas, hard edges and fine noise: every filter shows on it."""
    rng = random.Random(seed)
    base = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.linear_gradient("L").rotate(90).resize((width, height)),
        ),
    )
    draw = ImageDraw.Draw(base)
    for _ in range(max(3, (width * height) // 4000)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = x0 + rng.randrange(1, max(2, width // 3)), y0 + rng.randrange(1, max(2, height // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), outline=colour, width=2)
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    image = Image.blend(base, noise, 0.15).filter(ImageFilter.SMOOTH) if min(width, height) > 2 else base
    if mode == "RGB":
        return image
    if mode in ("P", "PA"):
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).convert(mode)
    if mode == "1":
        return image.convert("L").convert("1")
    if mode == "I;16":
        return image.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    if mode in ("I", "F"):
        return image.convert("L").convert("I").point(lambda v: v * 300 - 10000).convert(mode)
    if mode == "LA":
        return Image.merge("LA", (image.convert("L"), Image.linear_gradient("L").resize((width, height))))
    if mode == "RGBA":
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.radial_gradient("L").resize((width, height)))
        return rgba
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def random_image(mode: str, width: int, height: int, seed: int = 0, levels: int | None = None) -> Image.Image:
    """Seeded random pixels in any mode: noise (every seam shows on it) or, with *levels*, few values.

    *levels* picks each byte from that many values (flat areas, ties for rank filters,
    thresholds that bite).  P and PA images get a random palette; F images get finite
    floats (random bytes could be NaN).
    """
    rng = random.Random(f"{mode} {width}x{height} #{seed} levels={levels}")
    if mode == "F":
        values = [rng.uniform(-1000.0, 1000.0) for _ in range(levels or 0)]
        floats = (
            rng.choice(values) if levels else rng.uniform(-1000.0, 1000.0) for _ in range(width * height)
        )
        data = array.array("f", floats).tobytes()
        return Image.frombytes("F", (width, height), data)
    length = len(Image.new(mode, (1, 1)).tobytes()) * width * height
    if mode == "1":
        length = (width + 7) // 8 * height
    data = rng.randbytes(length)
    if levels:
        table = bytes(rng.randrange(256) for _ in range(levels))
        data = data.translate(bytes(table[i % levels] for i in range(256)))
    image = Image.frombytes(mode, (width, height), data)
    if mode in ("P", "PA"):
        image.putpalette(rng.randbytes(768))
    return image


def quadrants(width: int = 160, height: int = 120) -> Image.Image:
    """A photo whose four quadrants differ strongly in brightness and spread.

    Per-tile statistics are visibly wrong on it, so a global operation that used them
    instead of the whole image's would show.
    """
    image = photo(width, height, seed=11)
    w, h = width // 2, height // 2
    out = image.copy()
    out.paste(image.crop((0, 0, w, h)).point(lambda v: v // 5), (0, 0))
    out.paste(image.crop((w, 0, width, h)).point(lambda v: 60 + v // 3), (w, 0))
    out.paste(image.crop((0, h, w, height)).point(lambda v: 200 + v // 5), (0, h))
    return out
