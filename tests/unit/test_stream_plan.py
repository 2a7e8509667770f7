"""How a big job is laid out when it streams: pure arithmetic, no Redis (tilechord.worker.stream)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilechord import parse_pipeline
from tilechord.imaging import Grid
from tilechord.imaging.geometry import aligned_edges, tiles
from tilechord.imaging.tiffout import TILE
from tilechord.worker.stream import CELL_BYTES, STREAM_ABOVE, stream_grid, streams_output

BIG = (20000, 12000)


@given(st.integers(1, 200_000), st.integers(1, 400))
def test_aligned_edges_cut_at_multiples_of_the_tile_and_cover_the_length(length: int, parts: int) -> None:
    parts = min(parts, math.ceil(length / TILE))
    edges = aligned_edges(length, parts, TILE)
    assert edges[0] == 0 and edges[-1] == length
    assert all(a < b for a, b in itertools.pairwise(edges))
    assert all(edge % TILE == 0 for edge in edges[:-1])
    assert len(edges) - 1 <= parts
    assert aligned_edges(length, len(edges) - 1, TILE) == edges  # the count it gives is stable


@given(
    st.integers(TILE, 60_000),
    st.integers(TILE, 60_000),
    st.integers(0, 40),
    st.integers(1, 8),
    st.integers(1, 8),
)
def test_a_streamed_grid_has_tiles_no_larger_than_the_bound_and_at_least_as_fine_as_asked(
    width: int, height: int, halo: int, cols: int, rows: int
) -> None:
    grid = stream_grid((width, height), Grid(cols, rows), halo)
    cut = tiles(width, height, grid, halo, TILE)
    assert len(cut) == grid.cols * grid.rows  # what the client counts is what the workers cut
    for tile in cut:
        w, h = tile.cut[2] - tile.cut[0], tile.cut[3] - tile.cut[1]
        assert w * h * 4 <= max(CELL_BYTES, (TILE + 2 * halo) ** 2 * 4)
    assert (
        grid.cols >= min(cols, math.ceil(width / TILE))
        or len(aligned_edges(width, cols, TILE)) - 1 == grid.cols
    )


def test_only_a_big_single_frame_tiff_from_a_size_keeping_pipeline_streams() -> None:
    blur = parse_pipeline(["gaussian_blur:radius=4"])
    assert streams_output(blur, "TIFF", "RGB", BIG, 1)
    assert not streams_output(blur, "PNG", "RGB", BIG, 1)  # PNG's encoder needs the whole image
    assert not streams_output(blur, "TIFF", "RGB", (1000, 1000), 1)  # small: Pillow's own TIFF
    assert not streams_output(blur, "TIFF", "RGB", BIG, 3)  # frames
    assert not streams_output(blur, "TIFF", "P", BIG, 1)  # a palette: the writer has none
    assert not streams_output(parse_pipeline(["rotate:angle=90"]), "TIFF", "RGB", BIG, 1)  # geometry
    assert BIG[0] * BIG[1] > STREAM_ABOVE


@pytest.mark.parametrize("size", [(40000, 25000), (100000, 100000), (600, 100_000)])
def test_a_gigapixel_is_cut_into_bounded_tiles_whatever_grid_is_asked(size: tuple[int, int]) -> None:
    for asked in (Grid(1, 1), Grid(2, 1), Grid(16, 16)):
        grid = stream_grid(size, asked, 12)
        biggest = max((t.cut[2] - t.cut[0]) * (t.cut[3] - t.cut[1]) for t in tiles(*size, grid, 12, TILE))
        assert biggest * 4 <= CELL_BYTES
