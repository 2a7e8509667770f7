"""The image codec: files in and out, and the raw form tiles travel in.

Between tasks an image travels *raw*: a short json header (mode, size, palette) and
Pillow's own pixel bytes.  Nothing is re-encoded on the way, so nothing is lost, and a
tile costs one ``tobytes`` and one ``frombytes``.  Only the source (as the user gave it)
and the result (in the format asked for) are encoded files.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from ..errors import ImageTooLarge, InvalidImage, UnsupportedFormat

__all__ = [
    "RAW_MAGIC",
    "SourceInfo",
    "pack_raw",
    "unpack_raw",
    "is_raw",
    "inspect_source",
    "decode",
    "encode",
    "format_for_path",
    "check_format",
    "MULTIFRAME_FORMATS",
    "Timing",
    "frame_count",
    "decode_frames",
    "encode_frames",
]

RAW_MAGIC = b"TCRAW1\n"
#: What the decoders take: bytes, or a view of a buffer read straight from Redis.
Data: TypeAlias = "bytes | bytearray | memoryview"
_LEN = struct.Struct(">I")

# What Pillow raises on a damaged or hostile file, depending on the plugin.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
    MemoryError,
)


def is_raw(data: Data) -> bool:
    return bytes(data[: len(RAW_MAGIC)]) == RAW_MAGIC


def _json_safe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return list(value)
    return value


def _from_json_safe(value: Any) -> Any:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return tuple(value)
    return value


def pack_raw(image: Image.Image, extra: Mapping[str, Any] | None = None) -> bytes:
    """Serialise an image losslessly: mode, size, palette, transparency and pixels."""
    header: dict[str, Any] = {"mode": image.mode, "size": list(image.size)}
    if image.mode in ("P", "PA") and image.palette is not None:
        pmode = image.palette.mode
        header["palette"] = [pmode, base64.b64encode(bytes(image.getpalette(pmode) or [])).decode("ascii")]
    if "transparency" in image.info:
        header["transparency"] = _json_safe(image.info["transparency"])
    if extra:
        header["extra"] = dict(extra)
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((RAW_MAGIC, _LEN.pack(len(head)), head, image.tobytes()))


def _raw_header(data: Data) -> tuple[dict[str, Any], int]:
    """A raw blob's header, and where its pixels start."""
    if not is_raw(data):
        raise InvalidImage("not a tilechord raw image")
    offset = len(RAW_MAGIC)
    (hlen,) = _LEN.unpack_from(data, offset)
    offset += _LEN.size
    header: dict[str, Any] = json.loads(bytes(data[offset : offset + hlen]))
    return header, offset + hlen


def _image_from(header: Mapping[str, Any], pixels: Data) -> Image.Image:
    mode, size = header["mode"], tuple(header["size"])
    # frombuffer shares *pixels*' memory where it can (no copy of a tile's pixels) and marks
    # the image read-only; Pillow copies such an image before anything writes to it.
    image = Image.frombuffer(mode, size, pixels, "raw", mode, 0, 1)  # type: ignore[arg-type]
    if "palette" in header:
        pmode, pal = header["palette"]
        image.putpalette(base64.b64decode(pal), pmode)
    if "transparency" in header:
        image.info["transparency"] = _from_json_safe(header["transparency"])
    return image


def unpack_raw(data: Data) -> tuple[Image.Image, dict[str, Any]]:
    """The inverse of :func:`pack_raw`; returns the image and the ``extra`` mapping."""
    header, offset = _raw_header(data)
    return _image_from(header, memoryview(data)[offset:]), dict(header.get("extra") or {})


def join_strips(blobs: list[Data], size: tuple[int, int]) -> Image.Image | None:
    """Full-width strips, top to bottom, as one image: their pixels end to end, no canvas.

    Raw pixels are stored row after row, so strips that span the width and follow each
    other down the image are the whole image's bytes once put one after the other: one
    copy, where a canvas costs a fill, a decode per strip and a paste.  ``None`` when the
    pieces are not such strips (columns, a grid, different modes or palettes); each
    blob's ``extra`` must hold its ``box`` on the output.
    """
    parts = [_raw_header(blob) for blob in blobs]
    first = {k: v for k, v in parts[0][0].items() if k not in ("size", "extra")}
    order = sorted(range(len(parts)), key=lambda i: int(parts[i][0]["extra"]["box"][1]))
    y = 0
    for i in order:
        header = parts[i][0]
        x0, y0 = header["extra"]["box"][:2]
        width, height = header["size"]
        if (x0, y0, width) != (0, y, size[0]) or {
            k: v for k, v in header.items() if k not in ("size", "extra")
        } != first:
            return None
        y += height
    if y != size[1]:
        return None
    joined = b"".join(memoryview(blobs[i])[parts[i][1] :] for i in order)
    return _image_from({**first, "size": list(size)}, joined)


@dataclass(frozen=True)
class SourceInfo:
    """What the client learns from a source's header, before anything is enqueued."""

    format: str | None  # None for a raw (in-memory) image
    mode: str
    size: tuple[int, int]
    frames: int = 1


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"image is {size[0]}x{size[1]} = {pixels:,} pixels, over the limit of "
            f"{max_pixels:,} (raise TILECHORD_MAX_PIXELS to allow it)"
        )
    if size[0] < 1 or size[1] < 1:
        raise InvalidImage(f"image has no pixels ({size[0]}x{size[1]})")


_PILLOW_LIMIT = threading.Lock()


def _open_header(data: Data) -> Image.Image:
    """``Image.open`` with our pixel limit in place of Pillow's.

    Pillow warns above 89 MP and refuses above 179 MP, whatever TILECHORD_MAX_PIXELS says.
    Its check runs on the header alone, before any pixel is decoded; so does ours
    (:func:`_check_pixels`), with the configured limit and a message naming the setting.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            pass
        with _PILLOW_LIMIT:  # read the header again with Pillow's own ceiling lifted
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                return Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved


def _open(data: Data, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("the input is empty (0 bytes)")
    try:
        image = _open_header(data)
    except UnidentifiedImageError:
        raise InvalidImage(
            "the input is not an image in a format Pillow can read "
            f"(starts with {bytes(data[:8])!r}, {len(data):,} bytes)"
        ) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"cannot read the image header: {exc}") from None
    _check_pixels(image.size, max_pixels)
    return image


def inspect_source(data: Data, max_pixels: int) -> SourceInfo:
    """Read just the header: cheap, and enough to plan and validate a job."""
    if is_raw(data):
        image, _ = unpack_raw(data)
        _check_pixels(image.size, max_pixels)
        return SourceInfo(None, image.mode, image.size)
    image = _open(data, max_pixels)
    return SourceInfo(image.format, image.mode, image.size, getattr(image, "n_frames", 1))


def decode(data: Data, max_pixels: int) -> Image.Image:
    """Decode a source fully, turning every Pillow failure into :class:`InvalidImage`."""
    if is_raw(data):
        return unpack_raw(data)[0]
    image = _open(data, max_pixels)
    fmt = image.format
    try:
        image.load()
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"the {fmt} image is damaged or truncated: {exc}") from None
    return image


# Formats whose files Pillow writes with every frame (``save_all``).  Any other output
# gets the first frame only, as ``Image.save`` would give it.
MULTIFRAME_FORMATS = frozenset({"GIF", "PNG", "TIFF", "WEBP"})


def frame_count(info: SourceInfo, fmt: str | None, max_pixels: int) -> int:
    """How many frames a job processes: all of them when the output can hold them.

    The pixel limit applies to the frames together, so a small file cannot make the
    workers decode thousands of full-size frames.
    """
    if info.frames <= 1 or fmt not in MULTIFRAME_FORMATS:
        return 1
    _check_frames(info.size, info.frames, max_pixels)
    return info.frames


def _check_frames(size: tuple[int, int], frames: int, max_pixels: int) -> None:
    pixels = size[0] * size[1] * frames
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"the image has {frames} frames of {size[0]}x{size[1]}, {pixels:,} pixels in all, "
            f"over the limit of {max_pixels:,} (raise TILECHORD_MAX_PIXELS, or ask for a "
            "single-frame output format such as JPEG to process the first frame only)"
        )


@dataclass(frozen=True)
class Timing:
    """An animation's timing: each frame's duration (ms) and the loop count."""

    durations: tuple[int | float | None, ...] = ()
    loop: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"durations": list(self.durations), "loop": self.loop}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Timing:
        data = data or {}
        return cls(tuple(data.get("durations") or ()), data.get("loop"))


def decode_frames(data: Data, max_pixels: int, count: int) -> tuple[list[Image.Image], Timing]:
    """The first *count* frames of a source, each as Pillow loads it when seeking there."""
    image = decode(data, max_pixels)
    if count <= 1:
        return [image], Timing()
    _check_frames(image.size, count, max_pixels)
    loop = image.info.get("loop")
    frames: list[Image.Image] = []
    durations: list[int | float | None] = []
    fmt = image.format
    try:
        for index in range(count):
            image.seek(index)
            image.load()
            frames.append(image.copy())
            durations.append(image.info.get("duration"))
    except _DECODE_ERRORS as exc:
        raise InvalidImage(f"frame {len(frames) + 1} of the {fmt} image is damaged: {exc}") from None
    return frames, Timing(tuple(durations), loop)


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


def check_format(fmt: str, mode: str) -> str:
    """Normalise *fmt* and prove, on a tiny image, that it can hold *mode*."""
    Image.init()
    name = fmt.upper()
    if name == "JPG":
        name = "JPEG"
    if name == "TIF":
        name = "TIFF"
    if name not in Image.SAVE:
        known = ", ".join(sorted(Image.SAVE))
        raise UnsupportedFormat(f"unknown output format {fmt!r}; Pillow can write {known}")
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
    buffer = io.BytesIO()
    try:
        image.save(buffer, fmt, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise UnsupportedFormat(f"cannot write a mode {image.mode} image as {fmt}: {exc}") from None
    return buffer.getvalue()
