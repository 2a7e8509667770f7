"""Every frame's mode and size, before a job of several frames is enqueued.

A header gives the first frame only, and later frames may differ: a palette GIF's later
frames load as RGB or RGBA (Pillow composites them on the frames before), a TIFF's
pages each have their own mode and size, an MPO's second picture is often smaller, and
a later frame may be a decompression bomb.  The client reads them all here, as the
split will load them, so that a mode a step refuses, a frame the writer refuses or a
frame over the limits is a typed error before Redis sees a key, not a failed task.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from PIL import Image

from ..errors import InvalidImage, TilechordError
from .decode import (
    DECODE_ERRORS,
    check_pillow_limit,
    check_total,
    inspect_source,
    open_checked,
    over_pillow_limit,
)
from .raw import Data, is_raw

__all__ = ["FrameInfo", "inspect_frames"]

#: Formats whose frames all have the first frame's mode and size: an APNG's frames are
#: drawn onto the one canvas its header describes.
_UNIFORM = frozenset({"PNG"})
#: Formats that set a frame's mode and size as they seek to it, from its own header.
#: Any other format's frame is loaded to learn them (a GIF frame's mode is settled
#: only once it is composited), which is what Pillow's seek does to the frames before.
_SET_ON_SEEK = frozenset({"TIFF", "MPO", "WEBP", "AVIF"})


@dataclass(frozen=True)
class FrameInfo:
    """One frame as the split will load it: its mode and size."""

    mode: str
    size: tuple[int, int]


def inspect_frames(data: Data, max_pixels: int, count: int) -> tuple[FrameInfo, ...]:
    """The mode and size of each of the first *count* frames, within the limits.

    The pixel limit applies to the frames' real sizes added up, as far as they go: the
    walk stops at the first frame past it, so a file of many frames is never read to
    its end to be refused.
    """
    if is_raw(data) or count <= 1:
        info = inspect_source(data, max_pixels)
        return (FrameInfo(info.mode, info.size),)
    image = open_checked(data, max_pixels)
    fmt = image.format
    if fmt in _UNIFORM:
        check_total(fmt, count, count * image.size[0] * image.size[1], max_pixels)
        return (FrameInfo(image.mode, image.size),) * count
    frames: list[FrameInfo] = []
    pixels = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            for index in range(count):
                image.seek(index)
                pixels += image.size[0] * image.size[1]
                check_total(fmt, index + 1, pixels, max_pixels)
                what = f"frame {index + 1} of the {fmt} image is too large for Pillow to decode"
                check_pillow_limit(fmt, image.size, what)
                if fmt not in _SET_ON_SEEK:
                    image.load()
                frames.append(FrameInfo(image.mode, image.size))
        except TilechordError:
            raise  # a limit, already said
        except Image.DecompressionBombError as exc:
            what = f"frame {len(frames) + 1} of the {fmt} image is too large for Pillow to decode"
            raise over_pillow_limit(what, exc) from None
        except DECODE_ERRORS as exc:
            raise InvalidImage(f"frame {len(frames) + 1} of the {fmt} image is damaged: {exc}") from None
    return tuple(frames)
