"""Plain Pillow's peak memory for one whole job, in a fresh process; and the big test image.

Run as ``python -m benchlib.pillow_peak`` from ``scripts/`` (the bench does so): a fresh
interpreter holds nothing but Pillow and the job, so its ``VmHWM`` at the end is what plain
Pillow needs for that job, comparable with each tilechord process's own peak.

* ``job SPEC FORMAT PATH``: read the file, decode, apply the same Pillow call the operation
  makes, encode (JPEG with the input's options, as :func:`benchlib.pillow.pillow_job`;
  other formats with Pillow's defaults), and print one JSON line: the peak (read before
  anything else is allocated), the RSS before the job (the interpreter and Pillow alone),
  the seconds the job took, and digests of the output's bytes
  and of its decoded pixels, which the bench compares with tilechord's output.
* ``make WIDTH HEIGHT SEED PATH``: write :func:`benchlib.pillow.photo` as a PNG (fast
  compression), so that building the big input never inflates the bench's own memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import warnings
from pathlib import Path

from PIL import Image

from .pillow import PILLOW_EDITS, jpeg_options, photo


def status_kb(pid: int | str, field: str) -> int | None:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmHWM``, ``VmRSS``), or ``None``."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pixel_digest(data: bytes) -> str:
    """``mode size sha256-of-pixels`` of an encoded image: what "the same pixels" compares."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return f"{image.mode} {image.size[0]}x{image.size[1]} {hashlib.sha256(image.tobytes()).hexdigest()}"


def job(spec: str, fmt: str, path: str) -> dict[str, object]:
    """The whole job once in this process, with its peak and the output's digests."""
    Image.MAX_IMAGE_PIXELS = None  # plain Pillow on a big image: its user lifts the bomb check
    start_kb = status_kb("self", "VmRSS") or 0  # the interpreter and Pillow, before the job
    started = time.perf_counter()
    data = Path(path).read_bytes()
    source = Image.open(io.BytesIO(data))
    source.load()
    out = PILLOW_EDITS[spec](source)
    buffer = io.BytesIO()
    options = jpeg_options(source, out) if fmt == "JPEG" else {}
    out.save(buffer, fmt, **options)
    del source, out, data
    seconds = time.perf_counter() - started
    peak_kb = status_kb("self", "VmHWM") or 0  # before the digests allocate anything
    encoded = buffer.getvalue()
    return {
        "peak_bytes": peak_kb * 1024,
        "start_bytes": start_kb * 1024,
        "seconds": seconds,
        "bytes_sha256": hashlib.sha256(encoded).hexdigest(),
        "pixels": pixel_digest(encoded),
    }


def make(width: int, height: int, seed: int, path: str) -> None:
    """The big test image as a PNG at *path* (written beside it, then renamed: no torn file)."""
    target = Path(path)
    partial = target.with_suffix(".partial")
    photo(width, height, seed).save(partial, "PNG", compress_level=1)
    partial.replace(target)


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    if len(argv) == 4 and argv[0] == "job":
        print(json.dumps(job(argv[1], argv[2], argv[3])))
        return 0
    if len(argv) == 5 and argv[0] == "make":
        make(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])
        return 0
    print("usage: python -m benchlib.pillow_peak job SPEC FORMAT PATH | make W H SEED PATH", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
