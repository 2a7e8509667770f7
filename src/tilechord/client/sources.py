"""Sources: what a job reads its image from, read once, within the byte limit.

A path, bytes or a binary file object; anything else, a missing file or one over
``TILECHORD_MAX_BYTES`` is refused here, before Redis sees a byte.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, TypeAlias

from ..errors import ImageTooLarge, InvalidImage
from ..worker.stream import is_tiff

__all__ = ["STREAMED_FILE", "Source", "big_tiff", "read_source", "too_large"]

Source: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]"


#: A TIFF file larger than this is planned from its header and sent to Redis in chunks as
#: it is read, never held whole by the client (smaller ones cost less read at once).
STREAMED_FILE = 1024 * 1024


def big_tiff(source: Source) -> Path | None:
    """The path of a TIFF file over :data:`STREAMED_FILE` bytes, else ``None``.

    Such a file is planned from its header and sent in chunks as it is read, or piece by
    piece as its tiles need it (:meth:`Client.submit`): the client never holds it.  The
    client checks ``TILECHORD_MAX_BYTES`` once it knows which (a file sent piece by piece
    has no such limit: Redis never holds it).
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    try:
        if path.stat().st_size <= STREAMED_FILE:
            return None
        with path.open("rb") as handle:
            return path if is_tiff(handle.read(4)) else None
    except OSError:
        return None  # read_source says why


def too_large(path: Path, size: int, max_bytes: int, why: str = "") -> ImageTooLarge:
    """The error for a file over ``TILECHORD_MAX_BYTES``."""
    return ImageTooLarge(
        f"{path} is {size:,} bytes, over the limit of {max_bytes:,} (TILECHORD_MAX_BYTES){why}"
    )


def read_source(source: Source, max_bytes: int) -> bytes:
    """The source's bytes, or a typed error saying why it cannot be read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise too_large(path, size, max_bytes)
            data = path.read_bytes()
        except FileNotFoundError:
            raise InvalidImage(f"no such file: {path}") from None
        except IsADirectoryError:
            raise InvalidImage(f"{path} is a directory, not an image file") from None
        except PermissionError:
            raise InvalidImage(f"cannot read {path}: permission denied") from None
    elif hasattr(source, "read"):
        data = source.read(max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise InvalidImage("the file object must be opened in binary mode ('rb')")
        data = bytes(data)
    else:
        raise InvalidImage(f"a source is a path, bytes or a binary file object, not {type(source).__name__}")
    if len(data) > max_bytes:
        raise ImageTooLarge(f"the input is over the limit of {max_bytes:,} bytes (TILECHORD_MAX_BYTES)")
    return data
