"""Tile geometry is a pure function: tested alone, exhaustively and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilechord.errors import InvalidGrid
from tilechord.imaging import Grid, auto_grid, parse_grid, tiles


@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    cols=st.integers(1, 12),
    rows=st.integers(1, 12),
    halo=st.integers(0, 30),
)
def test_tiles_cover_every_pixel_exactly_once(
    width: int, height: int, cols: int, rows: int, halo: int
) -> None:
    parts = tiles(width, height, Grid(cols, rows), halo)
    assert len(parts) == min(cols, width) * min(rows, height)
    covered = [[0] * width for _ in range(height)]
    for t in parts:
        x0, y0, x1, y1 = t.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height  # never empty
        cx0, cy0, cx1, cy1 = t.cut
        assert (cx0, cy0) == (max(0, x0 - halo), max(0, y0 - halo))
        assert (cx1, cy1) == (min(width, x1 + halo), min(height, y1 + halo))
        for y in range(y0, y1):
            for x in range(x0, x1):
                covered[y][x] += 1
    assert all(v == 1 for row in covered for v in row)


def test_default_two_by_one_grid_is_a_left_and_a_right_half() -> None:
    left, right = tiles(7, 3, Grid(2, 1))
    assert left.box == (0, 0, 3, 3) and right.box == (3, 0, 7, 3)
    assert left.describe() == "tile 1/2 at (0, 0) 3x3"


def test_tiles_differ_in_size_by_at_most_one_pixel() -> None:
    widths = {t.size[0] for t in tiles(1001, 10, Grid(7, 1))}
    assert max(widths) - min(widths) <= 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2x1", Grid(2, 1)),
        ("4X3", Grid(4, 3)),
        (" 5 x 5 ", Grid(5, 5)),
        ((3, 2), Grid(3, 2)),
        ([1, 1], Grid(1, 1)),
    ],
)
def test_parse_grid_accepts_the_usual_spellings(text: object, expected: Grid) -> None:
    assert parse_grid(text) == expected


@pytest.mark.parametrize("bad", ["2", "0x1", "x", "2x-1", (0, 2), (2,), "axb", 3, (True, 1)])
def test_parse_grid_rejects_nonsense_with_a_typed_error(bad: object) -> None:
    with pytest.raises(InvalidGrid):
        parse_grid(bad)


def test_parse_grid_enforces_the_side_limit() -> None:
    with pytest.raises(InvalidGrid, match="at most 8"):
        parse_grid("9x1", max_side=8)


def test_auto_grid_gives_one_full_width_strip_per_worker_on_big_images_and_one_tile_on_small() -> None:
    assert auto_grid(6000, 4000, 2) == Grid(1, 2)
    assert auto_grid(4000, 6000, 2) == Grid(1, 2)
    assert auto_grid(6000, 4000, 4) == Grid(1, 4)
    assert auto_grid(300, 200, 8) == Grid(1, 1)
    assert auto_grid(600_000, 3, 8) == Grid(1, 3)  # never thinner than a row


def test_auto_grid_cuts_a_big_image_into_strips_of_at_most_the_tile_size_up_to_the_tile_limit() -> None:
    most = 12 * 2**20
    assert auto_grid(6000, 4000, 2, max_tile_pixels=most) == Grid(1, 2)  # 24 MP: one per worker
    grid = auto_grid(20000, 10000, 2, max_tile_pixels=most)  # 200 MP: 16 strips of 12.5 MP
    assert grid == Grid(1, 16)
    assert all((t.box[2] - t.box[0]) * (t.box[3] - t.box[1]) <= most for t in tiles(20000, 10000, grid))
    assert auto_grid(100_000, 100_000, 2, max_tile_pixels=most, most=256) == Grid(1, 256)
