"""Big test images (issue #16) without big memory: pixels as a seeded function of position.

An image of any size exists only as :func:`pixel_region`, a vectorised function of
``(x, y, seed)``, so any box of a gigapixel image can be made again on its own: the writers
make files band by band, and :func:`reference_region` gives Pillow's result for one box of
the output.  The picture is bricks of 256x128 flat colours with gentle ramps, a diagonal
gradient over everything (wrapping, which adds edges), and seeded noise in one brick of
32: deflate with the horizontal predictor packs it about 32:1 (a 40000x25000 RGB file in
512x512 tiles is 93 MB), yet a blur changes almost half its pixels.

:class:`ProcessTreePeak` samples the resident memory of a process and all its descendants
(the command line, its embedded valkey-server, the Celery worker and its pool).
"""

from __future__ import annotations

import math
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image
from reference import Spec, reference

from tilechord import parse_pipeline
from tilechord.ops.registry import Kind

Box = tuple[int, int, int, int]
Pixels = NDArray[np.uint8]

#: A brick's width and height; each row of bricks is shifted by 37 px more than the last.
CELL = (256, 128)
_U32 = np.uint32
_BANDS = {"L": 1, "RGB": 3, "RGBA": 4}


def _mix(v: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """A 32-bit integer hash (the "lowbias32" finaliser), element-wise, wrapping as uint32."""
    v = v ^ (v >> _U32(16))
    v = v * _U32(0x7FEB352D)
    v = v ^ (v >> _U32(15))
    v = v * _U32(0x846CA68B)
    return v ^ (v >> _U32(16))


def _seeded(a: NDArray[Any], b: NDArray[Any], seed: int) -> NDArray[np.uint32]:
    """A hash of two broadcastable integer arrays and the seed."""
    salt = _U32((seed * 0x9E3779B1 + 0x632BE5AB) & 0xFFFFFFFF)
    return _mix(_mix(a.astype(_U32) ^ salt) ^ (b.astype(_U32) * _U32(0x85EBCA77)))


def _brick_row(seed: int, row: int, xs: NDArray[np.int64], ys: NDArray[np.int64], out: Pixels) -> None:
    """Fill ``out`` (``len(ys)`` x ``len(xs)`` x 3) with the pixels of one row of bricks."""
    width, _ = CELL
    shifted = xs + (row * 37) % width
    cells = shifted // width
    first = int(cells[0])
    hashes = _seeded(np.arange(first, int(cells[-1]) + 1), np.full(1, row), seed)
    per_x = hashes[cells - first]
    inside = (shifted % width).astype(_U32)
    ramp_x = ((xs >> 4) & 127).astype(np.uint8)
    line = np.empty((len(xs), 3), np.uint8)
    for k in range(3):
        colour = (per_x >> _U32(8 * k)) & _U32(0xFF)
        slope = (per_x >> _U32(24 + k)) & _U32(1)
        line[:, k] = (colour // _U32(2) + slope * inside // _U32(4) + _U32(40 * k)).astype(np.uint8)
    line += ramp_x[:, None]
    ramp_y = ((ys >> 3) & 127).astype(np.uint8)
    np.add(line[None, :, :], ramp_y[:, None, None], out=out)
    for j in np.nonzero(((hashes >> _U32(27)) & _U32(31)) == 0)[0]:  # one brick in 32 is noisy
        start = (first + int(j)) * width - (row * 37) % width
        a, z = max(int(xs[0]), start), min(int(xs[-1]) + 1, start + width)
        if a < z:
            noise = _seeded(np.arange(a, z)[None, :], ys[:, None], seed ^ 0x5BD1E995)
            cells_out = out[:, a - int(xs[0]) : z - int(xs[0])]
            for k in range(3):
                cells_out[..., k] += ((noise >> _U32(8 * k)) & _U32(31)).astype(np.uint8)


def pixel_array(seed: int, box: Box, mode: str = "RGB") -> Pixels:
    """The pixels of *box* of the seeded image: ``(rows, columns, bands)`` uint8, any box, any size.

    Every pixel depends only on its own ``(x, y)`` and *seed*, never on the box, so the
    boxes of a tiling give the crops of one image.  L is the red band; RGBA adds an alpha
    made from the green band.
    """
    left, upper, right, lower = box
    if mode not in _BANDS:
        raise ValueError(f"mode {mode!r} is not one of {sorted(_BANDS)}")
    if left < 0 or upper < 0 or right < left or lower < upper:
        raise ValueError(f"box {box} is not a box of the first quadrant")
    rgb = np.empty((lower - upper, right - left, 3), np.uint8)
    if rgb.size:
        xs = np.arange(left, right, dtype=np.int64)
        height = CELL[1]
        for row in range(upper // height, (lower - 1) // height + 1):
            y0, y1 = max(upper, row * height), min(lower, (row + 1) * height)
            ys = np.arange(y0, y1, dtype=np.int64)
            _brick_row(seed, row, xs, ys, rgb[y0 - upper : y1 - upper])
    if mode == "L":
        return np.ascontiguousarray(rgb[..., :1])
    if mode == "RGBA":
        alpha = 255 - (rgb[..., 1:2] >> 1)
        return np.concatenate([rgb, alpha], axis=2)
    return rgb


def pixel_region(seed: int, box: Box, mode: str = "RGB") -> Image.Image:
    """:func:`pixel_array` as a Pillow image of *mode*."""
    pixels = pixel_array(seed, box, mode)
    return Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)


def bands(width: int, height: int, rows: int) -> Iterator[Box]:
    """Full-width boxes of *rows* rows (the last may be shorter), top to bottom."""
    for top in range(0, height, rows):
        yield (0, top, width, min(height, top + rows))


# --------------------------------------------------------------------------- writers


def _tiles(seed: int, width: int, height: int, tile: int, mode: str) -> Iterator[Pixels]:
    """Tiles in TIFF order, made one row of tiles at a time (tifffile pads the edge ones)."""
    for box in bands(width, height, tile):
        band = pixel_array(seed, box, mode)
        for left in range(0, width, tile):
            yield band[:, left : left + tile]


def write_tiled_tiff(
    path: Path,
    width: int,
    height: int,
    seed: int,
    tile: int = 512,
    compression: str | None = "deflate",
    bigtiff: bool = True,
    predictor: bool = True,
    mode: str = "RGB",
) -> None:
    """A tiled TIFF of the seeded image, by tifffile from an iterator of tiles (a row of tiles held).

    *compression* is any tifffile encodes tiles with ("deflate", "zlib" (Adobe deflate),
    "lzw", "packbits", "jpeg" ...) or None.
    """
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        tif.write(
            _tiles(seed, width, height, tile, mode),
            shape=(height, width, _BANDS[mode]),
            dtype=np.uint8,
            tile=(tile, tile),
            compression=compression,
            predictor=predictor or None,
            photometric="minisblack" if mode == "L" else "rgb",
            extrasamples=("unassalpha",) if mode == "RGBA" else None,
            maxworkers=2,
        )


def _encode_strip(strip: Pixels, compression: str | None, predictor: bool) -> bytes:
    """One strip as TIFF stores it: horizontal differences (per sample) then the codec."""
    if compression in (None, "none", "packbits") and predictor:
        raise ValueError(f"no predictor with compression {compression!r}")
    data = imagecodecs.delta_encode(strip, axis=-2) if predictor else strip
    if compression in (None, "none"):
        return bytes(data.tobytes())
    if compression in ("deflate", "zlib", "adobe_deflate"):
        return bytes(imagecodecs.zlib_encode(data.tobytes(), level=6))
    if compression == "lzw":
        return bytes(imagecodecs.lzw_encode(data.tobytes()))
    if compression == "packbits":
        return bytes(imagecodecs.packbits_encode(data, axis=-2))
    raise ValueError(f"striped compression {compression!r} is not written here")


def write_striped_tiff(
    path: Path,
    width: int,
    height: int,
    seed: int,
    rowsperstrip: int = 64,
    compression: str | None = "deflate",
    bigtiff: bool = False,
    predictor: bool = True,
    mode: str = "RGB",
) -> None:
    """A striped TIFF of the seeded image, each strip made and encoded here, tifffile writing the bytes.

    tifffile takes strips from an iterator only as encoded bytes, so they are encoded here
    with the codecs Pillow's libtiff writes: none, LZW, deflate ("deflate" is tag 32946,
    "zlib" / "adobe_deflate" tag 8), PackBits.
    """
    tag = {"zlib": "adobe_deflate"}.get(compression or "none", compression or "none")
    strips = (
        _encode_strip(pixel_array(seed, box, mode), compression, predictor)
        for box in bands(width, height, rowsperstrip)
    )
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        tif.write(
            strips,
            shape=(height, width, _BANDS[mode]),
            dtype=np.uint8,
            rowsperstrip=rowsperstrip,
            compression=None if tag == "none" else tag,
            predictor=predictor or None,
            photometric="minisblack" if mode == "L" else "rgb",
            extrasamples=("unassalpha",) if mode == "RGBA" else None,
        )


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_png(path: Path, width: int, height: int, seed: int, mode: str = "RGB", level: int = 6) -> None:
    """A PNG of the seeded image, written here band by band (filter Sub on every row), never whole."""
    colour = {"L": 0, "RGB": 2, "RGBA": 6}[mode]
    packer = zlib.compressobj(level)
    with open(path, "wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)))
        for box in bands(width, height, 256):
            sub = imagecodecs.delta_encode(pixel_array(seed, box, mode), axis=-2).reshape(box[3] - box[1], -1)
            rows = np.empty((sub.shape[0], sub.shape[1] + 1), np.uint8)
            rows[:, 0], rows[:, 1:] = 1, sub  # filter type 1 (Sub): each byte less the pixel's left one
            if data := packer.compress(rows.tobytes()):
                out.write(_png_chunk(b"IDAT", data))
        out.write(_png_chunk(b"IDAT", packer.flush()))
        out.write(_png_chunk(b"IEND", b""))


def write_jpeg(path: Path, width: int, height: int, seed: int, quality: int = 90) -> None:
    """A JPEG of the seeded image by Pillow (which encodes only a whole image: it is held, once)."""
    pixel_region(seed, (0, 0, width, height)).save(path, "JPEG", quality=quality)


# --------------------------------------------------------------------------- references


def reference_region(
    seed: int, box: Box, image_size: tuple[int, int], ops: Sequence[Spec], mode: str = "RGB"
) -> Image.Image:
    """Pillow's result for *box* of the whole seeded image through *ops*, made from that box alone.

    The box is cut wider by a margin, clipped at the image's edges, the Pillow calls of
    ``reference.py`` run on the cut, and the margin is trimmed.  Why this is the
    whole-image result: a step of reach r makes each pixel from the pixels within r of it,
    with coordinates beyond the image clamped to its edge (Pillow extends edge pixels).
    Where the cut stops inside the image, Pillow extends the cut's edge instead, which is
    wrong only within r of that edge, and each later step spreads the damage by its own
    reach: a margin of at least the sum of the reaches keeps the box exact.  Where the cut
    reaches the image's edge, its edge *is* the image's, extended exactly as on the whole
    image.  The margin is twice tilechord's halo (its sum of reaches) plus 2, so that a
    reach tilechord understates shows as a difference here instead of being copied.
    Only steps that keep the size and need no whole-image statistics can be cut like this.
    """
    pipeline = parse_pipeline(list(ops))
    if any(step.kind in (Kind.GLOBAL, Kind.GEOMETRY) for step in pipeline):
        raise ValueError(f"{pipeline} has a global or geometry step: no region reference")
    margin = 2 * pipeline.halo + 2
    width, height = image_size
    left, upper, right, lower = box
    cut = (
        max(0, left - margin),
        max(0, upper - margin),
        min(width, right + margin),
        min(height, lower + margin),
    )
    edited = reference(pixel_region(seed, cut, mode), ops)
    if edited.size != (cut[2] - cut[0], cut[3] - cut[1]):
        raise ValueError(f"{pipeline} changed the size of a region")
    return edited.crop((left - cut[0], upper - cut[1], right - cut[0], lower - cut[1]))


def region_grid(size: tuple[int, int], across: int, down: int, align: tuple[int, int] = (1, 1)) -> list[Box]:
    """*across* x *down* boxes covering an image, their edges on multiples of *align* (or the image's)."""
    width, height = size
    step_x = math.ceil(math.ceil(width / across) / align[0]) * align[0]
    step_y = math.ceil(math.ceil(height / down) / align[1]) * align[1]
    return [
        (x, y, min(width, x + step_x), min(height, y + step_y))
        for y in range(0, height, step_y)
        for x in range(0, width, step_x)
    ]


class TiledTiffReader:
    """Boxes of frame 0 of a tiled TIFF, decoded by tifffile from the tiles they touch only.

    Independent of tilechord's own region reader, so a test reading tilechord's output with
    it does not check tilechord with tilechord.
    """

    def __init__(self, path: Path) -> None:
        self.tif = tifffile.TiffFile(path)
        self.page = self.tif.pages.first
        if not self.page.is_tiled:
            raise ValueError(f"{path} is not tiled")
        self.size = (int(self.page.imagewidth), int(self.page.imagelength))
        self.tile = (int(self.page.tilewidth), int(self.page.tilelength))

        self._lock = threading.Lock()  # one file handle: seek and read together

    def close(self) -> None:
        self.tif.close()

    def region(self, box: Box) -> Pixels:
        """The pixels of *box* (inside the image) as ``(rows, columns, samples)``."""
        left, upper, right, lower = box
        (tw, th), across = self.tile, math.ceil(self.size[0] / self.tile[0])
        out = np.empty((lower - upper, right - left, int(self.page.samplesperpixel)), self.page.dtype)
        handle = self.tif.filehandle
        for row in range(upper // th, (lower - 1) // th + 1):
            for col in range(left // tw, (right - 1) // tw + 1):
                index = row * across + col
                with self._lock:
                    handle.seek(self.page.dataoffsets[index])
                    data = handle.read(self.page.databytecounts[index])
                tile, _, _ = self.page.decode(data, index, jpegtables=self.page.jpegtables)
                assert tile is not None, f"tile {index} is empty"
                tile = tile.reshape(th, tw, -1)
                x0, y0 = max(left, col * tw), max(upper, row * th)
                x1, y1 = min(right, (col + 1) * tw), min(lower, (row + 1) * th)
                out[y0 - upper : y1 - upper, x0 - left : x1 - left] = tile[
                    y0 - row * th : y1 - row * th, x0 - col * tw : x1 - col * tw
                ]
        return out


# --------------------------------------------------------------------------- memory and values


def _status_kb(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of *pid* in kB, from /proc (empty if it is gone)."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    found[line[:5]] = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return found


def _parents() -> dict[int, int]:
    """Every live process's parent, from /proc/*/stat (this kernel has no task/*/children files)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    raw = f.read()
            except OSError:
                continue
            fields = raw[raw.rfind(b")") + 2 :].split()
            if fields and fields[0] not in (b"Z", b"X"):
                parents[int(name)] = int(fields[1])
    return parents


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@dataclass
class Peak:
    """The most one process was seen holding: its own high-water mark (VmHWM) and resident size."""

    pid: int
    ppid: int
    cmdline: str
    hwm: int = 0  # bytes
    rss: int = 0  # bytes


class ProcessTreePeak:
    """A thread that samples, every *interval* s, the memory of *root* and all its descendants.

    VmHWM is the kernel's own peak of each process, so a sample misses nothing that
    happened before it, only what a process did in its last *interval* before it ended.
    """

    def __init__(self, root: int, interval: float = 0.2) -> None:
        self.root, self.interval = root, interval
        self.peaks: dict[int, Peak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-tree-peak", daemon=True)

    def sample(self) -> None:
        """Read every process of the tree once."""
        parents = _parents()
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        for pid in tree:
            status = _status_kb(pid)
            if not status:
                continue
            if pid not in self.peaks:
                self.peaks[pid] = Peak(pid, parents.get(pid, 0), _cmdline(pid))
            peak = self.peaks[pid]
            peak.hwm = max(peak.hwm, status.get("VmHWM", 0) * 1024)
            peak.rss = max(peak.rss, status.get("VmRSS", 0) * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> ProcessTreePeak:
        self._thread.start()
        return self

    def stop(self) -> dict[int, Peak]:
        """Stop sampling (after one last sample); the peaks by pid."""
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peaks

    def role(self, peak: Peak) -> str:
        """client (the root), redis, worker (Celery's main process), pool (its children), or other."""
        if peak.pid == self.root:
            return "client"
        if "valkey-server" in peak.cmdline or "redis-server" in peak.cmdline:
            return "redis"
        if "celery" in peak.cmdline and " worker" in peak.cmdline:
            parent = self.peaks.get(peak.ppid)
            return "pool" if parent is not None and "celery" in parent.cmdline else "worker"
        return "other"

    def by_role(self) -> dict[str, int]:
        """The highest VmHWM of each role, in bytes."""
        roles: dict[str, int] = {}
        for peak in self.peaks.values():
            roles[self.role(peak)] = max(roles.get(self.role(peak), 0), peak.hwm)
        return roles
