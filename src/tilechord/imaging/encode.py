"""Encoding results: output format names, and files that keep what the source said.

The output carries the source's ICC profile, EXIF, DPI and (for JPEG to JPEG) its
quantisation tables, so an edit does not silently strip colour management or degrade a
JPEG more than one re-encode must.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, JpegImagePlugin

from ..errors import UnsupportedFormat
from .decode import Timing
from .raw import pack_raw

__all__ = ["format_for_path", "normal_format", "check_format", "encode", "encode_frames"]

#: Spellings people use that Pillow does not register as format names.
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


def format_for_path(path: str) -> str:
    """The Pillow format name for an output path's extension."""
    Image.init()
    ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise UnsupportedFormat(
            f"cannot tell an image format from {path!r}; use an extension such as "
            ".png, .jpg, .webp, .tif, .bmp or .gif"
        )
    return fmt


def normal_format(fmt: str) -> str:
    """Pillow's name for a format the user typed ("jpg", "tif", "png" ...).

    The one place that spelling is decided, so the library and the command line accept
    and refuse the same names with the same message.
    """
    Image.init()
    name = _FORMAT_ALIASES.get(fmt.upper(), fmt.upper())
    if name not in Image.SAVE:
        known = ", ".join(sorted(Image.SAVE))
        raise UnsupportedFormat(f"unknown output format {fmt!r}; Pillow can write {known}")
    return name


def check_format(fmt: str, mode: str) -> str:
    """Normalise *fmt* and prove, on a tiny image, that it can hold *mode*.

    Done before a job is enqueued, so a mode the writer refuses fails at once and not
    after every tile has been processed.
    """
    name = normal_format(fmt)
    probe = Image.new(mode, (2, 2))
    try:
        probe.save(io.BytesIO(), name)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedFormat(
            f"{name} cannot hold a mode {mode} image ({exc}); pick another format "
            "(PNG and TIFF hold most modes) or add a 'convert:mode=RGB' step"
        ) from None
    return name


#: TIFF tags that are EXIF metadata rather than the file's structure (Make, Model ...).
#: Orientation is left out on purpose: Pillow turns a TIFF upright as it loads it.
_TIFF_EXIF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)


def _source_exif(source: Image.Image) -> bytes | None:
    """The source's EXIF: a JPEG/PNG/WebP's EXIF block, or a TIFF's descriptive tags."""
    if source.info.get("exif"):
        return bytes(source.info["exif"])
    if source.format != "TIFF":
        return None
    tags = source.getexif()
    exif = Image.Exif()
    for tag in _TIFF_EXIF_TAGS:
        if tag in tags:
            exif[tag] = tags[tag]
    return exif.tobytes() if len(exif) else None


def _save_options(source: Image.Image | None, image: Image.Image, fmt: str) -> dict[str, Any]:
    """Carry what the source file said about itself into the output file."""
    options: dict[str, Any] = {}
    if source is None:
        return options
    info = source.info
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    exif = _source_exif(source)
    if exif:
        options["exif"] = exif
    if "dpi" in info:
        options["dpi"] = info["dpi"]
    if fmt == "JPEG":
        if source.format == "JPEG" and image.mode == source.mode:
            options["qtables"] = source.quantization  # type: ignore[attr-defined]
            sampling = JpegImagePlugin.get_sampling(source)
            if sampling != -1:
                options["subsampling"] = sampling
        else:
            options["quality"] = 95
    if fmt == "GIF" and "background" in info:
        # Pillow's GIF writer reads the image's own info: a whole-image pipeline keeps
        # the source's background (a WebP canvas colour, a GIF index) and writes it into
        # the palette, so the merged canvas is saved with it too.
        options["background"] = info["background"]
    if "transparency" in image.info and fmt in ("PNG", "GIF"):
        options["transparency"] = image.info["transparency"]
    return options


def encode(image: Image.Image, fmt: str | None, source: Image.Image | None = None) -> bytes:
    """Encode the result; ``fmt=None`` keeps it raw (for :func:`tilechord.process_image`)."""
    if fmt is None:
        return pack_raw(image)
    return _save(image, fmt, _save_options(source, image, fmt))


def encode_frames(
    frames: list[Image.Image], fmt: str | None, source: Image.Image | None, timing: Timing
) -> bytes:
    """Encode an animation as Pillow's ``save_all`` does, keeping durations and loop count."""
    if len(frames) == 1 or fmt is None:
        return encode(frames[0], fmt, source)
    options = _save_options(source, frames[0], fmt)
    options.update(save_all=True, append_images=frames[1:])
    if timing.durations and all(d is not None for d in timing.durations):
        options["duration"] = list(timing.durations)
    if timing.loop is not None:
        options["loop"] = timing.loop
    return _save(frames[0], fmt, options)


def _save(image: Image.Image, fmt: str, options: dict[str, Any]) -> bytes:
    """Write one file, turning a writer's refusal into :class:`UnsupportedFormat`."""
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedFormat(f"cannot write a mode {image.mode} image as {fmt}: {exc}") from None
    return buffer.getvalue()
