"""Decoding sources: the header read that plans a job, and the full decode a worker does.

Every failure Pillow can raise on a damaged or hostile file becomes :class:`InvalidImage`,
and the size is checked against tilechord's own limit (TILECHORD_MAX_PIXELS) on the
header alone, before any pixel is decoded.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import ImageTooLarge, InvalidImage, TilechordError
from .raw import Data, is_raw, unpack_raw

__all__ = [
    "SourceInfo",
    "Timing",
    "MULTIFRAME_FORMATS",
    "LAYERED_FORMATS",
    "DECODE_ERRORS",
    "open_checked",
    "open_file",
    "count_frames",
    "check_total",
    "check_pillow_limit",
    "over_pillow_limit",
    "inspect_source",
    "decode",
    "decode_frames",
    "frame_count",
]

# What Pillow raises on a damaged or hostile file: whatever its plugin's parsing trips
# on (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, but also its
# own assertions, an AttributeError on a half-read header, arithmetic on fields a fuzzer
# set, MemoryError).  Caught only around Pillow's calls on the input, where any of them
# means "Pillow cannot decode this file", and said as InvalidImage.
DECODE_ERRORS = (Exception,)

# Formats whose files Pillow writes with every frame (``save_all``).  Any other output
# gets the first frame only, as ``Image.save`` would give it.
MULTIFRAME_FORMATS = frozenset({"AVIF", "GIF", "MPO", "PNG", "TIFF", "WEBP"})

# Formats whose decoder applies Pillow's own limit as it loads a frame (TIFF allocates
# each page at its declared size), not when it opens the file or seeks to the frame.
CHECKS_ON_LOAD = frozenset({"TIFF"})

# Formats whose header gives a placeholder mode, the real one settled as Pillow loads the
# picture (an ICNS says RGBA, then loads the PNG inside it as L, P or RGB): loaded to
# learn it, as the split will (they are small: an icon is at most 1024x1024).
MODE_ON_LOAD = frozenset({"ICNS"})

# Formats whose ``n_frames`` counts the layers a picture is made of, not frames: the
# file stands for its composite, one frame, as ``Image.open(...).save`` writes it.
LAYERED_FORMATS = frozenset({"PSD"})


@dataclass(frozen=True)
class SourceInfo:
    """What the client learns from a source's header, before anything is enqueued."""

    format: str | None  # None for a raw (in-memory) image
    mode: str
    size: tuple[int, int]
    frames: int = 1


@dataclass(frozen=True)
class Timing:
    """An animation's timing: each frame's duration (ms) and the loop count."""

    durations: tuple[int | float | None, ...] = ()
    loop: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The form the merge task's arguments carry it in."""
        return {"durations": list(self.durations), "loop": self.loop}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Timing:
        """The inverse of :meth:`to_json`; ``None`` (a still image) is no timing."""
        data = data or {}
        return cls(tuple(data.get("durations") or ()), data.get("loop"))


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image over tilechord's limit, or one with no pixels at all."""
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"image is {size[0]}x{size[1]} = {pixels:,} pixels, over the limit of "
            f"{max_pixels:,} (raise TILECHORD_MAX_PIXELS to allow it)"
        )
    if size[0] < 1 or size[1] < 1:
        raise InvalidImage(f"image has no pixels ({size[0]}x{size[1]})")


def check_total(fmt: str | None, frames: int, pixels: int, max_pixels: int) -> None:
    """Apply the pixel limit to the first *frames* frames a job would decode, together."""
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"the first {frames} frames of the {fmt} image have {pixels:,} pixels in all, "
            f"over the limit of {max_pixels:,} (raise TILECHORD_MAX_PIXELS, or ask for a "
            "single-frame output format such as JPEG to process the first frame only)"
        )


def _open_header(data: Data) -> Image.Image:
    """``Image.open``, with tilechord's pixel limit standing in for Pillow's.

    Pillow warns above ``Image.MAX_IMAGE_PIXELS`` (89 MP) and refuses above twice that,
    whatever TILECHORD_MAX_PIXELS says.  That limit is a module global: lifting it for
    one open would lift it for every thread of the user's program.  So a header Pillow
    refuses is read again by :func:`_open_unchecked`, and :func:`_open` applies the
    configured limit to it, still before any pixel is decoded.  The warning is silenced
    because the configured limit, not Pillow's, decides.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            return _open_unchecked(io.BytesIO(data))


def _open_unchecked(fp: IO[bytes]) -> ImageFile.ImageFile:
    """``Image.open`` without its size check: the same plugins, tried in the same order.

    This relies on Pillow internals (as of Pillow 13): ``Image.OPEN`` maps a format to
    its ``(factory, accept)``, ``Image.ID`` is the order ``Image.open`` tries them in,
    and ``Image.open`` checks the size once, after a factory returns.  A plugin that
    checks the size itself while opening (WebP does) still refuses; :func:`_open` says
    so.  tests/unit/test_imaging_pillow.py fails if any of this changes.
    """
    prefix = fp.read(16)
    tried: set[str] = set()
    for load_plugins in (Image.preinit, Image.init):  # the common plugins, then all
        load_plugins()
        for fmt in [fmt for fmt in Image.ID if fmt not in tried]:
            tried.add(fmt)
            image = _try_plugin(fmt, fp, prefix)
            if image is not None:
                return image
    raise UnidentifiedImageError("cannot identify image file")


def _try_plugin(fmt: str, fp: IO[bytes], prefix: bytes) -> ImageFile.ImageFile | None:
    """One plugin's go at the file, as ``Image.open`` gives it: ``None`` if not its file."""
    factory, accept = Image.OPEN[fmt]
    accepted = not accept or accept(prefix)
    if isinstance(accepted, str) or not accepted:  # a str says why it cannot (no codec)
        return None
    fp.seek(0)
    try:
        return factory(fp, "")
    except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open skips
        return None


def over_pillow_limit(what: str, exc: Image.DecompressionBombError) -> ImageTooLarge:
    """The error for an image Pillow's own code refuses, past what tilechord can lift.

    Some decoders check ``Image.MAX_IMAGE_PIXELS`` themselves while opening, loading or
    seeking (WebP on open, TIFF on load, GIF and MPO frames on seek).  Only the program
    may change that process-wide limit; tilechord will not do it behind its back.
    """
    return ImageTooLarge(
        f"{what}: {exc} (this is Pillow's own limit, PIL.Image.MAX_IMAGE_PIXELS, which "
        "its decoder applies itself; TILECHORD_MAX_PIXELS cannot lift it)"
    )


def check_pillow_limit(fmt: str | None, size: tuple[int, int], what: str) -> None:
    """Refuse from the header a frame that the decoder itself would refuse as it loads it.

    Pillow's rule (``Image._decompression_bomb_check``): an error over twice
    ``Image.MAX_IMAGE_PIXELS``, read at each call, since the program may change it.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = size[0] * size[1]
    if fmt in CHECKS_ON_LOAD and limit is not None and pixels > 2 * limit:
        exc = Image.DecompressionBombError(
            f"Image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, "
            "could be decompression bomb DOS attack."
        )
        raise over_pillow_limit(what, exc)


def _open(data: Data, max_pixels: int) -> Image.Image:
    """The header, opened and checked, with Pillow's failures as :class:`InvalidImage`."""
    if not data:
        raise InvalidImage("the input is empty (0 bytes)")
    try:
        image = _open_header(data)
    except UnidentifiedImageError:
        raise InvalidImage(
            "the input is not an image in a format Pillow can read "
            f"(starts with {bytes(data[:8])!r}, {len(data):,} bytes)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise over_pillow_limit("the image is too large for Pillow to open", exc) from None
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"cannot read the image header: {exc}") from None
    _check_pixels(image.size, max_pixels)
    return image


def open_file(fp: IO[bytes], max_pixels: int) -> Image.Image:
    """The header of a source read through a file object, checked (a big TIFF read by region).

    The merge reads a region-read source's metadata this way, fetching only its header.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            try:
                image: Image.Image = Image.open(fp)
            except Image.DecompressionBombError:
                fp.seek(0)
                image = _open_unchecked(fp)
        except UnidentifiedImageError:
            raise InvalidImage("the input is not an image in a format Pillow can read") from None
        except DECODE_ERRORS as exc:
            raise InvalidImage(f"cannot read the image header: {exc}") from None
    _check_pixels(image.size, max_pixels)
    return image


def open_checked(data: Data, max_pixels: int) -> Image.Image:
    """The header, opened and checked against tilechord's limit (for :mod:`.frames`)."""
    return _open(data, max_pixels)


def count_frames(image: Image.Image) -> int:
    """How many frames the file has, a damaged frame table refused as :class:`InvalidImage`.

    Reading ``n_frames`` makes some plugins parse the whole file (a GIF's blocks, a
    PSD's layer records), so damage anywhere in it can surface here.
    """
    if image.format in LAYERED_FORMATS:
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return int(getattr(image, "n_frames", 1))
    except Image.DecompressionBombError as exc:
        raise over_pillow_limit(f"a frame of the {image.format} image is too large for Pillow", exc) from None
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"cannot count the frames of the {image.format} image: {exc}") from None


def inspect_source(data: Data, max_pixels: int, *, by_region: bool = False) -> SourceInfo:
    """Read just the header: cheap, and enough to plan and validate a job.

    *by_region*: the source is a TIFF that tiles read by region, never Pillow's decoder,
    so the limit Pillow's TIFF decoder applies as it loads does not apply to it.
    """
    if is_raw(data):
        try:
            image, _ = unpack_raw(data)
        except DECODE_ERRORS as exc:
            raise InvalidImage(f"a damaged tilechord raw image: {exc}") from None
        _check_pixels(image.size, max_pixels)
        return SourceInfo(None, image.mode, image.size)
    image = _open(data, max_pixels)
    fmt = image.format
    if not by_region:
        check_pillow_limit(fmt, image.size, f"the {fmt} image is too large for Pillow to decode")
    if fmt in MODE_ON_LOAD:
        image = decode(data, max_pixels)
        _check_pixels(image.size, max_pixels)
    return SourceInfo(fmt, image.mode, image.size, count_frames(image))


def decode(data: Data, max_pixels: int) -> Image.Image:
    """Decode a source fully, turning every Pillow failure into :class:`InvalidImage`."""
    if is_raw(data):
        return unpack_raw(data)[0]
    image = _open(data, max_pixels)
    fmt = image.format
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise over_pillow_limit(f"the {fmt} image is too large for Pillow to decode", exc) from None
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"the {fmt} image is damaged or truncated: {exc}") from None
    return image


def frame_count(info: SourceInfo, fmt: str | None, max_pixels: int) -> int:
    """How many frames a job processes: all of them when the output can hold them.

    The pixel limit applies to the frames together (:func:`tilechord.imaging.frames.inspect_frames`
    adds up their real sizes before anything is enqueued), so a small file cannot make
    the workers decode thousands of full-size frames.  *max_pixels* is kept for callers.
    """
    if info.frames <= 1 or fmt not in MULTIFRAME_FORMATS:
        return 1
    return info.frames


def decode_frames(data: Data, max_pixels: int, count: int) -> tuple[list[Image.Image], Timing]:
    """The first *count* frames of a source, each as Pillow loads it when seeking there."""
    image = decode(data, max_pixels)
    if count <= 1:
        return [image], Timing()
    loop = image.info.get("loop")
    frames: list[Image.Image] = []
    durations: list[int | float | None] = []
    fmt = image.format
    pixels = 0
    try:
        for index in range(count):
            image.seek(index)
            pixels += image.size[0] * image.size[1]
            check_total(fmt, index + 1, pixels, max_pixels)
            image.load()
            frames.append(image.copy())
            durations.append(image.info.get("duration"))
    except TilechordError:
        raise  # a limit, already said
    except Image.DecompressionBombError as exc:
        what = f"frame {len(frames) + 1} of the {fmt} image is too large for Pillow to decode"
        raise over_pillow_limit(what, exc) from None
    except DECODE_ERRORS as exc:
        raise InvalidImage(f"frame {len(frames) + 1} of the {fmt} image is damaged: {exc}") from None
    return frames, Timing(tuple(durations), loop)
