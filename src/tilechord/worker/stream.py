"""Jobs too big for one process: tiles read by region, a TIFF written as the tiles come.

Paths, each taken only where it gives exactly what the whole-image path gives:

* **Region input.**  A single-frame tiled or striped TIFF (what big images come in) is
  not decoded by the split: it reads the header, and each tile's task reads only the
  TIFF tiles or strips its region touches, from the chunked source in Redis
  (:mod:`tilechord.imaging.regions`, proven equal to Pillow's decode per compression);
  a raw source (``process_image``) likewise, each tile reading its rows.
* **Strip input.**  A PNG is decoded from the top, strip by strip
  (:func:`strip_tiles`), each row of tiles given out as soon as its rows are in: by the
  split (a big one after it has sent the chord, the edits waiting for their tiles), or
  by the client of a windowed job (:mod:`tilechord.worker.window`).
* **Streamed output.**  A TIFF output of more than :data:`STREAM_ABOVE` pixels, from a
  pipeline that keeps the image's size, is cut into job tiles aligned to the output's
  512 x 512 TIFF tiles and no larger than :data:`CELL_BYTES`.  Each ``edit`` stores its
  core as compressed TIFF tiles (a few MB); the merge checks they are all there and hands
  the client a manifest, and the client feeds them, one row of TIFF tiles at a time, to
  tifffile's writer, straight into the output file: a tiled BigTIFF.  No process holds
  the image, and Redis holds the output once (as the tiles), never a second copy.

A job with a TIFF in and a streamed TIFF out has no process whose memory grows with the
image, so its pixel limit is ``TILECHORD_MAX_STREAM_PIXELS``, not ``TILECHORD_MAX_PIXELS``.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from PIL import Image

from ..errors import TilechordError
from ..imaging import Grid
from ..imaging.geometry import aligned_edges
from ..imaging.raw import RAW_HEAD, Data, is_raw, raw_layout
from ..imaging.regions import ReadAt, TiffLayout, read_region, tiff_layout
from ..imaging.strips import NotStreamable, can_stream, iter_strips
from ..imaging.tiffout import TILE, band_segments, encode_tiles, pack_segments, supported, write_tiled
from ..ops import Kind, Pipeline
from .keys import CHUNK_BYTES, JobKeys

if TYPE_CHECKING:
    from .app import TilechordCelery
    from .specs import Plan, TileSpec
    from .store import BlobStore

__all__ = [
    "CELL_BYTES",
    "STREAM_ABOVE",
    "assemble",
    "encode_core",
    "is_tiff",
    "merge_stream",
    "read_piece",
    "region_layout",
    "stored_tiles",
    "strip_tiles",
    "stream_grid",
    "streams_output",
]

#: A TIFF output over this many pixels is written as the tiles come (48 MP: the size at
#: which holding the image, its tiles and the encoder's buffers passes a few hundred MB).
STREAM_ABOVE = 48_000_000
#: The most raw bytes of one streamed job tile with its halo (at 4 bytes a pixel, the
#: widest a pipeline's modes get), so that a tile, its edit and its encoding fit well
#: under a gigabyte in one process whatever the image's size.
CELL_BYTES = 48 * 1024 * 1024
_PIXEL_BYTES = 4
#: The largest TIFF segment (tile or strip) a region read may fetch: a striped TIFF
#: written as one strip holding the whole image is decoded whole instead.
_SEGMENT_BYTES = CHUNK_BYTES

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def streams_output(
    pipeline: Pipeline, fmt: str | None, mode: str, size: tuple[int, int], frames: int
) -> bool:
    """Whether a job's output is written as its tiles come (see the module's docstring)."""
    return (
        fmt == "TIFF"
        and frames == 1
        and size[0] * size[1] > STREAM_ABOVE
        and supported(mode)
        and not any(step.kind is Kind.GEOMETRY for step in pipeline)
    )


def stream_grid(size: tuple[int, int], grid: Grid, halo: int) -> Grid:
    """The grid of a streamed job: the finer of *grid* and tiles of at most :data:`CELL_BYTES`.

    Cells are aligned to the output's TIFF tiles (:func:`~tilechord.imaging.geometry.aligned_edges`),
    so the grid asked for is a most, not an exact count.
    """
    width, height = size
    side = math.isqrt(CELL_BYTES // _PIXEL_BYTES) - 2 * halo
    side = max(TILE, side // TILE * TILE)
    cols = min(max(grid.cols, -(-width // side)), -(-width // TILE))
    rows = min(max(grid.rows, -(-height // side)), -(-height // TILE))
    # the count aligned cells really make (aligning may merge two): what the workers will cut
    return Grid(len(aligned_edges(width, cols, TILE)) - 1, len(aligned_edges(height, rows, TILE)) - 1)


def is_tiff(head: bytes) -> bool:
    """Whether *head* (a file's first bytes) opens a TIFF or BigTIFF, either byte order."""
    return head[:4] in _TIFF_MAGIC


def region_layout(read: Callable[[int, int], bytes], length: int) -> TiffLayout | None:
    """The layout of a TIFF that can be read by region, or ``None`` (decode it whole instead)."""
    if length < 8 or not is_tiff(read(0, 8)):
        return None
    try:
        layout = tiff_layout(read, length)
    except TilechordError:  # not readable by region (a codec, a layout): the whole-image path says why
        return None
    return layout if layout.segment_bytes <= _SEGMENT_BYTES else None


#: Rows of a PNG decoded at a time, when its tiles are cut as it is decoded.
STRIP_ROWS = 256


def strip_tiles(
    source: Data, layout: list[TileSpec], max_pixels: int
) -> Iterator[tuple[TileSpec, Image.Image]] | None:
    """Each tile's input, in the layout's order, as a PNG is decoded from the top.

    ``None`` for a source that does not decode strip by strip (not a PNG, or interlaced).
    """
    if not can_stream(source):
        return None
    try:
        strips = iter_strips(source, STRIP_ROWS, max_pixels)
    except NotStreamable:
        return None
    return _cut_strips(strips, layout)


def _cut_strips(
    strips: Iterator[Image.Image], layout: list[TileSpec]
) -> Iterator[tuple[TileSpec, Image.Image]]:
    spans = sorted({(t.cut[1], t.cut[3]) for t in layout})
    bands: dict[tuple[int, int], Image.Image] = {}
    y = 0
    for strip in strips:
        for span in spans:
            top, bottom = max(span[0], y), min(span[1], y + strip.height)
            if top < bottom:  # this strip has rows of this row of tiles
                band = bands.get(span) or bands.setdefault(span, _band_like(strip, span))
                band.paste(strip.crop((0, top - y, strip.width, bottom - y)), (0, top - span[0]))
        y += strip.height
        for span in [s for s in bands if s[1] <= y]:  # a row of tiles complete: its tiles
            band = bands.pop(span)
            for tile in (t for t in layout if (t.cut[1], t.cut[3]) == span):
                yield tile, band.crop((tile.cut[0], 0, tile.cut[2], span[1] - span[0]))


def _band_like(strip: Image.Image, span: tuple[int, int]) -> Image.Image:
    """An empty row of tiles in a strip's mode, palette and info (its rows get pasted in)."""
    band = Image.new(strip.mode, (strip.width, span[1] - span[0]))
    if strip.mode in ("P", "PA") and strip.palette is not None:
        band.putpalette(strip.getpalette(strip.palette.mode) or [], strip.palette.mode)
    band.info.update(strip.info)
    return band


def read_piece(app: TilechordCelery, keys: JobKeys, tile: TileSpec) -> Image.Image:
    """A tile's input, its cut box, read from the source by region: a TIFF's segments, or
    a raw source's rows (``process_image``), by byte ranges of the stored value."""
    read, length = app.store.reader(keys, keys.source)
    head = read(0, min(RAW_HEAD, length))
    if is_raw(head):
        return raw_layout(head).crop(read, tile.cut)
    return read_region(read, tiff_layout(read, length), tile.cut)


def encode_core(core: Image.Image) -> bytes:
    """An edited core of a streamed job, as the compressed TIFF tiles the merge writes."""
    return pack_segments(encode_tiles(core, TILE))


def merge_stream(plan: Plan, layout: list[TileSpec], source: Image.Image | None) -> dict[str, Any]:
    """A streamed job's end: the manifest from which the client writes the output TIFF.

    The file is assembled where it is written (:func:`assemble`, called by the client's
    ``Job.save`` / ``Job.get``), reading the edited tiles straight from Redis, so Redis
    never holds the output twice and no worker writes it only to send it on.  *source*
    (its header) gives the output the source's resolution and ICC profile.
    """
    width, height = plan.sizes[0]
    info = source.info if source is not None else {}
    icc = info.get("icc_profile")
    assert plan.mode is not None  # a streamed plan carries its output's mode
    return {
        "size": [width, height],
        "mode": plan.mode,
        "xs": sorted({t.box[0] for t in layout} | {width}),
        "ys": sorted({t.box[1] for t in layout} | {height}),
        "dpi": list(info["dpi"]) if "dpi" in info else None,
        "icc": base64.b64encode(icc).decode() if icc else None,
    }


def assemble(manifest: dict[str, Any], fh: BinaryIO, reader: Callable[[int], ReadAt]) -> int:
    """Write a streamed job's tiled BigTIFF into *fh* from its edited tiles; the bytes written.

    ``reader(tile)`` reads byte ranges of one job tile's edited core: in Redis
    (:func:`stored_tiles`), or in a windowed job's spool (:mod:`tilechord.client.window`).
    One row of TIFF tiles is held at a time, whatever the image's size (``tiffout.band_segments``).
    """
    width, height = (int(v) for v in manifest["size"])
    dpi = manifest.get("dpi")
    icc = manifest.get("icc")
    start = fh.tell()
    write_tiled(
        fh, (width, height), str(manifest["mode"]),
        band_segments([int(x) for x in manifest["xs"]], [int(y) for y in manifest["ys"]], reader, TILE), TILE,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
        icc=base64.b64decode(icc) if icc else None,
    )  # fmt: skip
    return fh.tell() - start


def stored_tiles(store: BlobStore, keys: JobKeys) -> Callable[[int], ReadAt]:
    """:func:`assemble`'s reader of edited tiles kept in Redis until the end."""
    return lambda tile: store.reader(keys, keys.edited(tile))[0]
