"""The old home of the codec, kept while callers move to the modules it was split into.

:mod:`.raw` (the raw pixel format tiles travel in), :mod:`.decode` (sources in) and
:mod:`.encode` (results out).  Import from those; this module goes once nothing uses it.
"""

from __future__ import annotations

from .decode import (
    MULTIFRAME_FORMATS,
    SourceInfo,
    Timing,
    decode,
    decode_frames,
    frame_count,
    inspect_source,
)
from .encode import check_format, encode, encode_frames, format_for_path, normal_format
from .raw import RAW_MAGIC, Data, is_raw, join_strips, pack_raw, unpack_raw

__all__ = [
    "RAW_MAGIC",
    "Data",
    "is_raw",
    "pack_raw",
    "unpack_raw",
    "join_strips",
    "SourceInfo",
    "Timing",
    "MULTIFRAME_FORMATS",
    "inspect_source",
    "decode",
    "decode_frames",
    "frame_count",
    "format_for_path",
    "normal_format",
    "check_format",
    "encode",
    "encode_frames",
]
