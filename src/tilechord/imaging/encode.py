"""Encoding results: output format names, and files that keep what the source said.

The output carries the source's ICC profile, EXIF, DPI and (for JPEG to JPEG) its
quantisation tables, so an edit does not silently strip colour management or degrade a
JPEG more than one re-encode must.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from PIL import Image, JpegImagePlugin

from ..errors import UnsupportedFormat
from .decode import Timing
from .raw import pack_raw
from .writers import has_writer, modes_written, probe_frames, writable_formats

__all__ = ["format_for_path", "normal_format", "check_format", "check_frames", "encode", "encode_frames"]

#: Spellings people use that Pillow does not register as format names.
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
#: JPEG and its multi-picture form (MPO: every frame a JPEG): the same quantisation tables.
_JPEG_FORMATS = ("JPEG", "MPO")


def format_for_path(path: str) -> str:
    """The Pillow format name for an output path's extension."""
    Image.init()
    ext = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    fmt = Image.registered_extensions().get(ext)
    if fmt is not None and not has_writer(fmt):
        raise UnsupportedFormat(f"Pillow has no writer for {fmt} (the format of {path!r}); {_choices()}")
    if fmt is None:
        raise UnsupportedFormat(
            f"cannot tell an image format from {path!r}; use an extension such as "
            ".png, .jpg, .webp, .tif, .bmp or .gif"
        )
    return fmt


def _choices() -> str:
    return "Pillow can write " + ", ".join(writable_formats())


def normal_format(fmt: str) -> str:
    """Pillow's name for a format the user typed ("jpg", "tif", "png" ...).

    The one place that spelling is decided, so the library and the command line accept
    and refuse the same names with the same message.  A format Pillow only reads, or
    registers with a stub writer (BUFR, GRIB, HDF5, WMF), is refused as having no writer.
    """
    Image.init()
    name = _FORMAT_ALIASES.get(fmt.upper(), fmt.upper())
    if name in Image.SAVE and has_writer(name):
        return name
    if name in Image.SAVE or name in Image.OPEN:
        raise UnsupportedFormat(f"Pillow has no writer for {name}; {_choices()}")
    raise UnsupportedFormat(f"unknown output format {fmt!r}; {_choices()}")


def _advice(name: str) -> str:
    """What to do about a mode *name* cannot hold: a mode it does hold, or another format."""
    modes = modes_written(name)
    if not modes:
        return "pick another format (PNG and TIFF hold most modes)"
    return (
        f"{name} holds modes {', '.join(modes)}: add a 'convert:mode={modes[0]}' step, "
        "or pick another format (PNG and TIFF hold most modes)"
    )


def check_format(fmt: str, mode: str) -> str:
    """Normalise *fmt* and prove, on a tiny image, that it can hold *mode*.

    Done before a job is enqueued, so a mode the writer refuses fails at once and not
    after every tile has been processed.
    """
    name = normal_format(fmt)
    try:
        Image.new(mode, (2, 2)).save(io.BytesIO(), name)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedFormat(f"{name} cannot hold a mode {mode} image ({exc}); {_advice(name)}") from None
    return name


def check_frames(fmt: str, frames: Sequence[tuple[str, tuple[int, int]]]) -> str:
    """Prove that *fmt* writes an animation of these (mode, size) frames, in this order.

    Each mode is checked as :func:`check_format` checks one, naming the first frame of
    it; then the whole sequence, since some writers refuse a mix (WebP frames of
    different sizes, a CMYK frame in a GIF).
    """
    name = normal_format(fmt)
    seen: set[str] = set()
    for index, (mode, _) in enumerate(frames):
        if mode not in seen:
            seen.add(mode)
            try:
                check_format(name, mode)
            except UnsupportedFormat as exc:
                raise UnsupportedFormat(f"frame {index + 1} of {len(frames)}: {exc}") from None
    try:
        probe_frames(name, frames)
    except Exception as exc:  # whatever the writer raises for a sequence it refuses
        shown = ", ".join(f"{mode} {w}x{h}" for mode, (w, h) in frames[:4])
        more = ", ..." if len(frames) > 4 else ""
        raise UnsupportedFormat(
            f"{name} cannot hold these {len(frames)} frames ({shown}{more}): {str(exc).rstrip('.')}; "
            "pick another format (TIFF holds frames of any mode and size)"
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
    if fmt in _JPEG_FORMATS:
        if source.format in _JPEG_FORMATS and image.mode == source.mode:
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
