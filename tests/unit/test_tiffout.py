"""tilechord.imaging.tiffout: a tiled BigTIFF written from cells' compressed tiles reads back as the image.

Seeded images of every supported mode are cut into cells aligned to the TIFF tile (one cell,
1024-pixel cells, irregular cells), each cell's tiles encoded alone, and the file written
through :func:`tiff_order`; Pillow and tifffile must both read back the original pixels, and
the tiles must be the very bytes tifffile's own writer makes for the whole image.
"""

from __future__ import annotations

import io
import itertools
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from tilechord.errors import InvalidGrid, InvalidImage, TilechordError, UnsupportedFormat
from tilechord.imaging.tiffout import (
    LEVEL,
    TILE,
    band_segments,
    encode_tiles,
    pack_segments,
    supported,
    tiff_order,
    tile_count,
    unpack_segments,
    write_tiled,
)

MODES = ("1", "L", "LA", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
SIZES = ((1, 1), (511, 513), (1300, 700))
# tifffile.imwrite's arguments that make each mode's file the way tiffout stores it.
TIFFFILE_ARGS: dict[str, dict[str, Any]] = {
    "1": {"photometric": "minisblack"},
    "L": {"photometric": "minisblack", "predictor": 2},
    "LA": {"photometric": "minisblack", "predictor": 2, "extrasamples": (2,)},
    "RGB": {"photometric": "rgb", "predictor": 2},
    "RGBA": {"photometric": "rgb", "predictor": 2, "extrasamples": (2,)},
    "CMYK": {"photometric": "separated", "predictor": 2},
    "I;16": {"photometric": "minisblack", "predictor": 2},
    "I": {"photometric": "minisblack", "predictor": 2},
    "F": {"photometric": "minisblack", "predictor": 3},
}


def _image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A seeded image: smooth ramps plus noise, so tiles neither vanish nor stay incompressible."""
    width, height = size
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.arange(height), np.arange(width))
    noise = rng.integers(0, 32, (height, width))
    if mode == "1":
        return Image.fromarray(((ramp // 7 + noise) % 2).astype(bool))
    if mode in ("I;16", "I", "F"):
        dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
        values = ramp * 37 + noise * 1000 - (2**20 if mode == "I" else 0)
        image = Image.fromarray(values.astype(dtype) if mode != "F" else values.astype(np.float32) / 7)
        assert image.mode == mode
        return image
    bands = len(mode)
    data = (ramp[..., None] * (np.arange(bands) + 1) + noise[..., None]) % 256
    return Image.frombytes(mode, size, data.astype(np.uint8).tobytes())


def _edges(length: int, cells: str) -> list[int]:
    """Cell edges along one axis: one cell, cells of 1024, or irregular (512, 1024, then the rest)."""
    inner = {"one": [], "1024": list(range(1024, length, 1024)), "irregular": [512, 1536]}[cells]
    return [0, *(e for e in inner if e < length), length]


def _written(image: Image.Image, cells: str, **meta: Any) -> bytes:
    """The image cut into cells, each cell's tiles encoded alone, written in TIFF order."""
    cols, rows = _edges(image.width, cells), _edges(image.height, cells)
    per_cell = [
        encode_tiles(image.crop((left, top, right, bottom)))
        for top, bottom in itertools.pairwise(rows)
        for left, right in itertools.pairwise(cols)
    ]
    out = io.BytesIO()
    order = tiff_order(cols, rows, TILE)
    write_tiled(out, image.size, image.mode, (per_cell[j][s] for j, s in order), **meta)
    return out.getvalue()


@pytest.mark.parametrize("cells", ["one", "1024", "irregular"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", MODES)
def test_cells_written_in_tiff_order_read_back_as_the_image(
    mode: str, size: tuple[int, int], cells: str
) -> None:
    image = _image(mode, size)
    data = _written(image, cells)
    with Image.open(io.BytesIO(data)) as back:
        assert (back.mode, back.size) == (mode, size)
        assert back.tobytes() == image.tobytes()
    expected = np.asarray(image)
    assert np.array_equal(tifffile.imread(io.BytesIO(data)).reshape(expected.shape), expected)


@pytest.mark.parametrize("mode", MODES)
def test_file_is_a_bigtiff_tiled_deflate_with_the_predictor(mode: str) -> None:
    data = _written(_image(mode, (1300, 700)), "irregular")
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled
        assert (page.tilewidth, page.tilelength) == (TILE, TILE)
        assert page.compression == 8
        assert page.predictor == TIFFFILE_ARGS[mode].get("predictor", 1)
        assert len(page.dataoffsets) == tile_count(1300, 700) == 6


@pytest.mark.parametrize("mode", MODES)
def test_tiles_are_the_bytes_tifffile_writes_and_the_file_is_as_large(mode: str) -> None:
    image = _image(mode, (1300, 700), seed=3)
    theirs = io.BytesIO()
    tifffile.imwrite(
        theirs, np.asarray(image), bigtiff=True, tile=(TILE, TILE), compression="adobe_deflate",
        compressionargs={"level": LEVEL}, metadata=None, **TIFFFILE_ARGS[mode],
    )  # fmt: skip
    raw = theirs.getvalue()
    with tifffile.TiffFile(io.BytesIO(raw)) as tif:
        page = tif.pages.first
        their_tiles = [raw[o : o + n] for o, n in zip(page.dataoffsets, page.databytecounts, strict=True)]
    assert encode_tiles(image) == their_tiles
    ours = _written(image, "1024")
    assert abs(len(ours) / len(raw) - 1) < 0.01


def test_edge_tiles_are_padded_to_full_tiles_of_zeros() -> None:
    image = _image("L", (3, 2))
    (tile,) = encode_tiles(image, 16)
    expected = np.zeros((16, 16), np.uint8)
    expected[:2, :3] = np.asarray(image)
    decoded = imagecodecs.delta_decode(
        np.frombuffer(imagecodecs.zlib_decode(tile), np.uint8).reshape(16, 16), axis=-1
    )
    assert np.array_equal(decoded, expected)


def test_dpi_and_icc_are_carried_and_absent_when_not_given() -> None:
    image = _image("RGB", (600, 300))
    icc = bytes(range(256)) * 3
    with Image.open(io.BytesIO(_written(image, "one", dpi=(300.0, 150.5), icc=icc))) as back:
        assert back.info["dpi"] == (300.0, 150.5)
        assert back.info["icc_profile"] == icc
    with Image.open(io.BytesIO(_written(image, "one"))) as bare:
        assert "dpi" not in bare.info and "icc_profile" not in bare.info


def test_supported_modes_and_a_refused_one() -> None:
    assert all(supported(mode) for mode in MODES)
    assert not any(supported(mode) for mode in ("P", "PA", "La", "YCbCr", "LAB", "RGBX", "I;16B"))
    with pytest.raises(UnsupportedFormat, match="'P'"):
        encode_tiles(Image.new("P", (4, 4)))
    with pytest.raises(UnsupportedFormat):
        write_tiled(io.BytesIO(), (4, 4), "P", [b"x"])


def test_packed_segments_unpack_to_views_of_the_value_itself() -> None:
    segments = [b"abc", b"", b"\x00" * 1000, bytes(range(256))]
    packed = pack_segments(segments)
    views = unpack_segments(packed)
    assert [bytes(v) for v in views] == segments
    assert all(v.obj is packed for v in views)  # slices of the value, not copies
    buffer = bytearray(packed)
    assert [bytes(v) for v in unpack_segments(memoryview(buffer))] == segments
    assert unpack_segments(pack_segments([])) == []


@pytest.mark.parametrize("damage", ["short", "magic", "truncated", "extra"])
def test_a_damaged_packed_value_is_refused(damage: str) -> None:
    packed = pack_segments([b"abc", b"defg"])
    bad = {
        "short": packed[:5],
        "magic": b"XXXX" + packed[4:],
        "truncated": packed[:-1],
        "extra": packed + b"!",
    }[damage]
    with pytest.raises(InvalidImage):
        unpack_segments(bad)


def test_tiff_order_interleaves_the_cells_of_each_band() -> None:
    # Two columns of cells (3 tiles and 1 tile wide), two rows (2 tiles and 1 tile high).
    order = list(tiff_order([0, 96, 100], [0, 64, 70], 32))
    assert order == [
        (0, 0), (0, 1), (0, 2), (1, 0),
        (0, 3), (0, 4), (0, 5), (1, 1),
        (2, 0), (2, 1), (2, 2), (3, 0),
    ]  # fmt: skip


@pytest.mark.parametrize("cells", ["one", "1024", "irregular"])
def test_tiff_order_over_cells_gives_the_whole_images_tiles(cells: str) -> None:
    image = _image("RGB", (2100, 1300), seed=5)
    cols, rows = _edges(image.width, cells), _edges(image.height, cells)
    per_cell = [
        encode_tiles(image.crop((left, top, right, bottom)))
        for top, bottom in itertools.pairwise(rows)
        for left, right in itertools.pairwise(cols)
    ]
    assert [per_cell[j][s] for j, s in tiff_order(cols, rows)] == encode_tiles(image)


@pytest.mark.parametrize(
    ("cols", "rows"),
    [([0, 500, 1000], [0, 10]), ([10, 1024], [0, 10]), ([0], [0, 10]), ([0, 512, 512, 600], [0, 10])],
)
def test_tiff_order_refuses_cells_off_the_tile_grid(cols: list[int], rows: list[int]) -> None:
    with pytest.raises(InvalidGrid):
        list(tiff_order(cols, rows, 512))


@pytest.mark.parametrize("given", [5, 7])
def test_write_tiled_refuses_the_wrong_number_of_tiles(given: int) -> None:
    tiles = encode_tiles(_image("L", (1300, 700)))
    assert len(tiles) == 6
    tiles = (tiles * 2)[:given]
    with pytest.raises(InvalidImage, match="tiles"):
        write_tiled(io.BytesIO(), (1300, 700), "L", iter(tiles))


class _Sink(io.RawIOBase):
    """A seekable file that keeps no bytes: its size, and how many tiles were taken at each write."""

    def __init__(self, taken: list[int]) -> None:
        self.pos = self.end = 0
        self.taken = taken
        self.writes: list[tuple[int, int]] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.writes.append((self.taken[0], size))
        self.pos += size
        self.end = max(self.end, self.pos)
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = (offset, self.pos + offset, self.end + offset)[whence]
        self.end = max(self.end, self.pos)
        return self.pos

    def tell(self) -> int:
        return self.pos


def test_write_tiled_takes_tiles_one_at_a_time_and_holds_none_of_the_image() -> None:
    width = height = 64 * TILE  # 32768 x 32768 RGB: 3.2 GB of pixels, 4096 tiles
    (blank,) = encode_tiles(Image.new("RGB", (TILE, TILE), (10, 200, 30)))
    taken = [0]

    def tiles() -> Iterator[bytes]:
        for _ in range(tile_count(width, height)):
            taken[0] += 1
            yield bytes(blank)  # a fresh object each time, as tiles read from Redis are

    sink = _Sink(taken)
    tracemalloc.start()
    try:
        write_tiled(sink, (width, height), "RGB", tiles())  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert taken[0] == 4096
    tile_writes = [t for t, size in sink.writes if size == len(blank)]
    assert len(tile_writes) == 4096
    # the k-th tile is written when at most k + 1 tiles have been taken (tifffile peeks at one)
    assert all(t <= k + 2 for k, t in enumerate(tile_writes))
    assert sink.end > 4096 * len(blank)
    assert peak < 8 * 2**20, peak  # the IFD's offsets and counts; the pixels are 3.2 GB


def test_every_refusal_is_a_tilechord_error() -> None:
    for call in (
        lambda: unpack_segments(b"no"),
        lambda: list(tiff_order([0, 3, 9], [0, 4], 2)),
        lambda: encode_tiles(Image.new("RGB", (4, 4)), 10),
        lambda: write_tiled(io.BytesIO(), (0, 4), "L", []),
    ):
        with pytest.raises(TilechordError):
            call()


def test_band_segments_reads_each_job_tile_a_row_of_its_tiles_at_a_time() -> None:
    image = _image("RGB", (2100, 1700), seed=9)
    cols, rows = _edges(image.width, "1024"), _edges(image.height, "irregular")  # 3 x 3 cells
    values = [
        pack_segments(encode_tiles(image.crop((left, top, right, bottom))))
        for top, bottom in itertools.pairwise(rows)
        for left, right in itertools.pairwise(cols)
    ]
    opened: list[int] = []
    yielded: list[bytes] = []
    bands_done: list[int] = []  # how many output rows of tiles were complete at each first read
    reads: list[int] = []

    def reader(job: int) -> Any:
        opened.append(job)
        bands_done.append(len(yielded) // 5)  # 2100 px: 5 tiles a row

        def read(offset: int, size: int) -> bytes:
            reads.append(size)
            return values[job][offset : offset + size]

        return read

    for segment in band_segments(cols, rows, reader):
        yielded.append(bytes(segment))
    assert yielded == encode_tiles(image)
    assert opened == list(range(9))
    # row r of cells starts at output tile row 0, 1, 3: nothing of it is read before that
    assert bands_done == [0, 0, 0, 1, 1, 1, 3, 3, 3]
    # no read larger than one row of a cell's tiles (at most 3 tiles across, plus the tables)
    widest_row = max(sum(len(t) for t in encode_tiles(image)[n : n + 3]) for n in range(0, 45, 5))
    assert max(reads) <= widest_row
    assert sum(reads) < sum(len(v) for v in values) + 1024  # each byte read about once


def test_band_segments_refuses_a_job_tile_with_the_wrong_number_of_tiles() -> None:
    def reader(job: int) -> Any:
        value = pack_segments([b"x"] * (1 + job))
        return lambda offset, size: value[offset : offset + size]

    with pytest.raises(InvalidImage, match="job tile 1 holds 2 TIFF tiles, its 1088x100 cell has 3"):
        list(band_segments([0, 512, 1600], [0, 100], reader))


@pytest.mark.parametrize("kind", ["named", "anonymous", "ome-named"])
def test_write_tiled_writes_into_real_files_of_any_name(kind: str, tmp_path: Path) -> None:
    image = _image("RGB", (700, 600), seed=11)
    tiles = encode_tiles(image)
    opened: BinaryIO
    if kind == "anonymous":
        opened = tempfile.TemporaryFile(dir=tmp_path)  # noqa: SIM115 (its name is a file descriptor)
    else:
        opened = open(tmp_path / ("out.ome.tif" if kind == "ome-named" else "out.tif"), "w+b")  # noqa: SIM115
    with opened as fh:
        write_tiled(fh, image.size, "RGB", tiles)
        assert not fh.closed
        fh.seek(0)
        data = fh.read()
    with Image.open(io.BytesIO(data)) as back:
        assert back.tobytes() == image.tobytes()
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert not tif.is_ome and tif.pages.first.description == ""
