"""A windowed job's source parts: the skeleton and one tile's piece read as the whole file does.

What an edit of a windowed job reads (:mod:`tilechord.worker.window`) is the skeleton (every
byte outside the segments) and its tile's piece (the segments its box touches).  For every
file layout and compression the region tests cover, and any box, the layout parsed from the
two and the region read from them must equal Pillow's crop of the whole file; the skeleton
holds no segment byte, and a piece holds only the segments of its box.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tilechord.errors import InvalidImage
from tilechord.imaging.regions import read_region, region_ranges, tiff_layout
from tilechord.worker.window import RangeReader, cell_piece, pack_ranges, skeleton

WIDTH, HEIGHT = 203, 141  # neither a multiple of the tiles (32x48) nor of the strips (7 rows)
CASES = [
    (layout, compression, predictor, big)
    for layout in ("tiled", "striped")
    for compression, predictor in ((None, False), ("lzw", True), ("deflate", False), ("packbits", False))
    for big in (False, True)
] + [("tiled", "jpeg", False, False), ("striped", "jpeg", False, True)]


@functools.cache
def made(layout: str, compression: str | None, predictor: bool, big: bool) -> bytes:
    """A seeded RGB TIFF written by tifffile."""
    pixels = np.random.default_rng(7).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    pixels[:, :, 1] = np.arange(WIDTH, dtype=np.uint8)  # some smooth content for the codecs
    segments = {"tile": (48, 32)} if layout == "tiled" else {"rowsperstrip": 7}
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, compression=compression, predictor=predictor or None, bigtiff=big,
                     photometric="rgb", **segments)  # fmt: skip
    return buffer.getvalue()


@functools.cache
def made_by_pillow(compression: str | None) -> bytes:
    """A striped RGB TIFF as Pillow's ``save`` writes it."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(Image.open(io.BytesIO(made("tiled", None, False, False))))).save(
        buffer, "TIFF", compression=compression
    )
    return buffer.getvalue()


def boxes() -> st.SearchStrategy[tuple[int, int, int, int]]:
    xs, ys = st.integers(-4, WIDTH + 4), st.integers(-4, HEIGHT + 4)
    return st.tuples(xs, ys, xs, ys).map(
        lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    )


def parts(data: bytes, box: tuple[int, int, int, int]) -> RangeReader:
    """A reader over the skeleton and the box's piece only, as an edit has them."""

    def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    layout = tiff_layout(read, len(data))
    bones = skeleton(layout, read, len(data))
    assert bones is not None
    return RangeReader(bones, cell_piece(layout, read, len(data), box))


def assert_read_from_parts_is_pillows(data: bytes, box: tuple[int, int, int, int]) -> None:
    reader = parts(data, box)
    layout = tiff_layout(reader.read, reader.length)  # parsed from the skeleton alone
    got = read_region(reader.read, layout, box)
    with Image.open(io.BytesIO(data)) as whole:
        want = whole.crop(box)
        assert (got.mode, got.size, got.tobytes()) == (want.mode, want.size, want.tobytes())


@settings(max_examples=80, deadline=None)
@given(case=st.sampled_from(CASES), box=boxes())
def test_a_box_read_from_the_skeleton_and_its_piece_equals_pillows_crop_of_a_tifffile_file(
    case: tuple[str, str | None, bool, bool], box: tuple[int, int, int, int]
) -> None:
    assert_read_from_parts_is_pillows(made(*case), box)


@settings(max_examples=40, deadline=None)
@given(compression=st.sampled_from([None, "tiff_lzw", "tiff_adobe_deflate", "packbits"]), box=boxes())
def test_a_box_read_from_the_skeleton_and_its_piece_equals_pillows_crop_of_a_pillow_file(
    compression: str | None, box: tuple[int, int, int, int]
) -> None:
    assert_read_from_parts_is_pillows(made_by_pillow(compression), box)


@pytest.mark.parametrize("case", CASES)
def test_the_skeleton_holds_no_segment_byte_and_a_piece_only_its_boxs_segments(
    case: tuple[str, str | None, bool, bool],
) -> None:
    data = made(*case)

    def read(offset: int, size: int) -> bytes:
        return data[offset : offset + size]

    layout = tiff_layout(read, len(data))
    bones = skeleton(layout, read, len(data))
    assert bones is not None
    segment_bytes = sum(layout.bytecounts)
    assert len(bones) < len(data) - segment_bytes + 1024  # the header and tags, and a small table
    box = (10, 10, 40, 30)
    piece = cell_piece(layout, read, len(data), box)
    wanted = sum(size for _, size in region_ranges(layout, box))
    assert wanted < segment_bytes
    assert wanted <= len(piece) < wanted + 1024


def test_a_range_reader_joins_parts_and_reads_zeros_where_none_was_sent() -> None:
    reader = RangeReader(pack_ranges(20, [(0, b"abc"), (10, b"klm")]), pack_ranges(20, [(3, b"de")]))
    assert reader.length == 20
    assert reader.read(0, 6) == b"abcde\x00"
    assert reader.read(8, 6) == b"\x00\x00klm\x00"
    assert reader.read(18, 10) == b"\x00\x00"  # clipped to the file's length


def test_a_value_that_is_no_packed_range_is_refused_as_damaged() -> None:
    with pytest.raises(InvalidImage, match="damaged"):
        RangeReader(b"XXXX" + bytes(16))
