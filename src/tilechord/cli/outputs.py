"""Where a run writes: the inputs it expands, the names it gives outputs, and how it writes them.

Every fault of the output path (a missing directory, a file where a directory must be)
is an :class:`~tilechord.errors.InvalidOutput`, raised before any job starts.  Files are
written to a temporary file beside the target and renamed into place, so a failed or
interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from ..errors import InvalidImage, InvalidOutput

__all__ = [
    "check_directory",
    "expand_inputs",
    "extension",
    "make_directory",
    "plan_outputs",
    "safe_name",
    "write_atomic",
]

_GLOB_CHARS = frozenset("*?[")
#: the extension written for a format given with --format (others: Pillow's first one)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_NAME_BYTES = 200


def check_directory(directory: Path) -> None:
    """Fail unless *directory*, where an output goes, exists: a run never creates a parent."""
    if not directory.is_dir():
        raise InvalidOutput(f"output directory {directory} does not exist")


def make_directory(directory: Path) -> None:
    """Create a batch's output directory (and its parents) unless a file is in the way."""
    if directory.exists() and not directory.is_dir():
        raise InvalidOutput(f"{directory} is a file; with several inputs, -o names a directory")
    directory.mkdir(parents=True, exist_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write *data* to *path* through a temporary file and a rename."""
    directory = path.parent
    check_directory(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".part")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would; mkstemp makes files private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _image_suffixes() -> set[str]:
    Image.init()
    return set(Image.registered_extensions())


def expand_inputs(args: tuple[str, ...]) -> tuple[list[Path], bool]:
    """The input files, and whether they make a batch (several, a directory or a glob).

    A directory gives its image files (by extension, hidden ones skipped, sorted), a glob
    the files it matches (for globs the shell left alone, e.g. quoted).  A missing plain
    path is kept: its job reports it.
    """
    paths: list[Path] = []
    batch = len(args) > 1
    suffixes = _image_suffixes()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            batch = True
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
            )
            if not found:
                raise InvalidImage(f"no image files in the directory {path}")
            paths.extend(found)
        elif not path.exists() and _GLOB_CHARS & set(arg):
            batch = True
            matched = sorted(Path(m) for m in glob.glob(arg) if Path(m).is_file())
            if not matched:
                raise InvalidImage(f"no file matches {arg}")
            paths.extend(matched)
        else:
            paths.append(path)
    return paths, batch


def extension(fmt: str) -> str:
    """The file extension for Pillow format *fmt*: the usual one, not Pillow's first (``.jpg``)."""
    if fmt in _EXTENSIONS:
        return _EXTENSIONS[fmt]
    Image.init()
    for ext, name in Image.registered_extensions().items():
        if name == fmt:
            return ext
    return "." + fmt.lower()


def safe_name(stem: str, ext: str) -> str:
    """A file name that stays inside the output directory, whatever the input was called.

    Path separators, control characters (a newline, an escape sequence) and leading dots
    become ``_``; the stem is cut to 200 bytes of UTF-8.  The result is never ``.``,
    ``..``, empty, or hidden.
    """
    clean = _UNSAFE.sub("_", stem).strip()
    clean = re.sub(r"^\.+", lambda m: "_" * len(m.group()), clean)
    clean = clean.encode()[:_MAX_NAME_BYTES].decode("utf-8", "ignore") or "image"
    suffix = _UNSAFE.sub("_", ext)[:16]
    return clean + suffix


def plan_outputs(inputs: list[Path], directory: Path, fmt: str | None) -> list[Path]:
    """``directory/<stem>.<ext>`` for each input, in order, each unique and inside *directory*.

    Two inputs with the same name (``a/x.jpg`` and ``b/x.jpg``, or ``x.jpg`` and ``x.png``
    with ``--format png``) get ``x.jpg`` and ``x-2.jpg``, in the order given; an output
    never takes the path of an input.  The extension comes from ``--format`` or the input.
    """
    ext = extension(fmt) if fmt is not None else None
    sources = {p.resolve() for p in inputs}
    taken: set[str] = set()
    outputs = []
    for path in inputs:
        suffix = ext if ext is not None else path.suffix.lower()
        stem = path.stem if path.suffix else path.name
        name = safe_name(stem, suffix)
        count = 1
        while name in taken or (directory / name).resolve() in sources:
            count += 1
            name = safe_name(f"{stem}-{count}", suffix)
        taken.add(name)
        target = directory / name
        assert target.parent == directory and name not in (".", "..")
        outputs.append(target)
    return outputs
