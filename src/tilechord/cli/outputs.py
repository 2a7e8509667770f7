"""Where a run writes: the inputs it expands, the names it gives outputs, and how it writes them.

Every fault of the output path (a missing directory, a file where a directory must be,
a directory where a file must be, a directory nobody may create files in) is an
:class:`~tilechord.errors.InvalidOutput` naming the target, raised before any job starts,
so a mistake costs no editing.  Files are written to a temporary file beside the target
and renamed into place, so a failed or interrupted run never leaves a half-written file;
an error names the target, never that temporary file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from ..errors import InvalidImage, InvalidOutput

__all__ = [
    "batch_directory",
    "check_directory",
    "check_targets",
    "check_writable",
    "expand_inputs",
    "extension",
    "make_directory",
    "names_directory",
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
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidOutput(f"cannot create the output directory {directory}: {_reason(exc)}") from None


def names_directory(output: str) -> bool:
    """Whether ``-o`` *output* (as typed) is a directory: an existing one, or one ending in ``/``."""
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def batch_directory(output: str, count: int) -> Path:
    """The directory a batch of *count* images writes into: *output*, unless it names a file.

    ``-o single.png`` with two inputs is a mistake, not a request for a directory of that
    name (a trailing slash asks for one): refused before anything is created.
    """
    path = Path(output)
    if not names_directory(output) and not path.exists() and path.suffix.lower() in _image_suffixes():
        raise InvalidOutput(
            f"-o {output} names a file, but {count} images need a directory: give one "
            f"(-o {path.with_suffix('')}/), or end it with / to make a directory of that name"
        )
    return path


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def check_writable(target: Path) -> None:
    """Fail unless a file can be written at *target*: before any job, naming the target.

    The directory is tried for real (a temporary file made and removed at once): modes
    alone do not tell, for root, a read-only mount, or a filesystem like /proc.
    """
    directory = target.parent
    if directory.exists() and not directory.is_dir():
        raise InvalidOutput(f"cannot write {target}: {directory} is a file, not a directory")
    if not directory.is_dir():
        raise InvalidOutput(f"output directory {directory} does not exist: cannot write {target}")
    if target.is_dir():
        raise InvalidOutput(f"cannot write {target}: it is a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".part")
    except OSError as exc:
        raise InvalidOutput(
            f"cannot write {target}: cannot create a file in {directory} ({_reason(exc)})"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_targets(targets: list[Path]) -> None:
    """A batch's outputs: their directory takes new files, and none is a directory."""
    for target in targets:
        if target.is_dir():
            raise InvalidOutput(f"cannot write {target}: it is a directory")
    if targets:
        check_writable(targets[0])


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    """Write *data* to *path* through a temporary file and a rename.

    *data* is the bytes, or a function that writes them to the open file as they come (a
    big result streamed from Redis).  An :class:`OSError` names *path*, never the
    temporary file: that is all a user knows.
    """
    directory = path.parent
    check_directory(directory)
    try:
        _write_via_temporary(path, data)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def _write_via_temporary(path: Path, data: bytes | Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would; mkstemp makes files private
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
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
    path is kept: its job reports it.  A path ending in ``/`` must be a directory: it is
    the input that is wrong, whatever ``-o`` says.
    """
    paths: list[Path] = []
    batch = len(args) > 1
    suffixes = _image_suffixes()
    for arg in args:
        path = Path(arg)
        if arg.endswith(("/", os.sep)) and not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise InvalidImage(f"the input directory {arg} {what}")
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
    never takes the path of an input.  The extension comes from ``--format`` or the input,
    as the input spells it (``UPPER.JPG`` gives ``UPPER.JPG``); names that differ only in
    case count as the same, since many filesystems (macOS, Windows) cannot hold both.
    """
    ext = extension(fmt) if fmt is not None else None
    sources = {p.resolve() for p in inputs}
    taken: set[str] = set()
    outputs = []
    for path in inputs:
        suffix = ext if ext is not None else path.suffix
        stem = path.stem if path.suffix else path.name
        name = safe_name(stem, suffix)
        count = 1
        while name.casefold() in taken or (directory / name).resolve() in sources:
            count += 1
            name = safe_name(f"{stem}-{count}", suffix)
        taken.add(name.casefold())
        target = directory / name
        assert target.parent == directory and name not in (".", "..")
        outputs.append(target)
    return outputs
