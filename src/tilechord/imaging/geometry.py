"""Tile geometry: cut a W x H image into a COLS x ROWS grid, with halos.

Integer arithmetic only.  Column ``c`` of ``n`` spans ``[c*W//n, (c+1)*W//n)``, so the
tiles cover the image exactly (no gap, no overlap) for every size, and differ in width
by at most one pixel.  A grid with more columns than the image has pixels is clipped to
one pixel per column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidGrid

__all__ = ["Tile", "Grid", "parse_grid", "tiles", "aligned_edges", "auto_grid"]

Box = tuple[int, int, int, int]

_GRID_RE = re.compile(r"^\s*(\d+)\s*[xX\u00d7,]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Grid:
    """How many columns and rows of tiles an image is cut into."""

    cols: int
    rows: int

    def __str__(self) -> str:
        """``COLSxROWS``, the form :func:`parse_grid` reads back (logs, the CLI)."""
        return f"{self.cols}x{self.rows}"

    def clip(self, width: int, height: int) -> Grid:
        """The grid actually used for an image: at most one pixel per tile."""
        return Grid(min(self.cols, width), min(self.rows, height))


def parse_grid(grid: object, *, max_side: int = 1024) -> Grid:
    """Accept ``(cols, rows)``, ``"COLSxROWS"`` or a :class:`Grid`."""
    if isinstance(grid, Grid):
        cols, rows = grid.cols, grid.rows
    elif isinstance(grid, str):
        m = _GRID_RE.match(grid)
        if not m:
            raise InvalidGrid(f"a grid is written COLSxROWS, like 2x1 or 4x3, not {grid!r}")
        cols, rows = int(m.group(1)), int(m.group(2))
    elif (
        isinstance(grid, (tuple, list))
        and len(grid) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in grid)
    ):
        cols, rows = grid
    else:
        raise InvalidGrid(f"a grid is (cols, rows) or 'COLSxROWS', not {grid!r}")
    if cols < 1 or rows < 1:
        raise InvalidGrid(f"a grid needs at least one column and one row, not {cols}x{rows}")
    if cols > max_side or rows > max_side:
        raise InvalidGrid(f"a grid may have at most {max_side} columns and rows, not {cols}x{rows}")
    return Grid(cols, rows)


@dataclass(frozen=True)
class Tile:
    """One tile: its core box (what it contributes) and its cut box (core plus halo)."""

    index: int
    count: int
    box: Box
    cut: Box

    @property
    def size(self) -> tuple[int, int]:
        """The core's width and height: what the tile adds to the output."""
        return (self.box[2] - self.box[0], self.box[3] - self.box[1])

    def describe(self) -> str:
        """Where the tile is, for an error message that points at the failing part."""
        w, h = self.size
        return f"tile {self.index + 1}/{self.count} at ({self.box[0]}, {self.box[1]}) {w}x{h}"


def _edges(length: int, parts: int) -> list[int]:
    """Cut points in integers only, so tiles meet exactly and differ by one pixel at most."""
    return [i * length // parts for i in range(parts + 1)]


def aligned_edges(length: int, parts: int, align: int) -> list[int]:
    """Cut points at multiples of *align* (the last at *length*): cells of one size, the last shorter.

    The cell is ``ceil(length / parts)`` rounded up to *align*; with *parts* at most
    ``ceil(length / align)`` there are exactly *parts* cells (a streamed TIFF's job tiles,
    each holding whole TIFF tiles of the output).
    """
    cell = _ceil(_ceil(length, parts), align) * align
    return [min(i * cell, length) for i in range(_ceil(length, cell) + 1)]


def _ceil(a: int, b: int) -> int:
    return (a + b - 1) // b


def tiles(width: int, height: int, grid: Grid, halo: int = 0, align: int | None = None) -> list[Tile]:
    """The tiles of a ``width x height`` image, row by row, each cut with *halo*.

    With *align*, the cores' edges fall on multiples of it (:func:`aligned_edges`).
    """
    if width < 1 or height < 1:
        raise InvalidGrid(f"cannot tile an empty {width}x{height} image")
    if halo < 0:
        raise ValueError("halo must not be negative")
    g = grid.clip(width, height)
    if align is None:
        xs, ys = _edges(width, g.cols), _edges(height, g.rows)
    else:
        xs, ys = aligned_edges(width, g.cols, align), aligned_edges(height, g.rows, align)
    count = (len(xs) - 1) * (len(ys) - 1)
    out: list[Tile] = []
    for r in range(len(ys) - 1):
        for c in range(len(xs) - 1):
            box = (xs[c], ys[r], xs[c + 1], ys[r + 1])
            cut = (
                max(0, box[0] - halo),
                max(0, box[1] - halo),
                min(width, box[2] + halo),
                min(height, box[3] + halo),
            )
            out.append(Tile(len(out), count, box, cut))
    return out


def auto_grid(
    width: int,
    height: int,
    workers: int,
    *,
    min_tile_pixels: int = 512 * 512,
    max_tile_pixels: int | None = None,
    most: int | None = None,
) -> Grid:
    """A grid for ``grid="auto"``: about one tile per worker, none smaller than is worth moving.

    The tiles are full-width strips (1 x n): the merge joins their pixels end to end
    (rows follow rows) instead of decoding each onto a canvas, which saves more than a
    squarer grid's shorter cuts (its halos) would.  With *max_tile_pixels*, a big image
    gets more strips, none over that many pixels (so that a tile and its edit stay a few
    tens of MB in any process, whatever the image's size), up to *most* of them.
    """
    pixels = width * height
    n = max(1, min(workers, pixels // max(1, min_tile_pixels)))
    if max_tile_pixels:
        n = max(n, -(-pixels // max_tile_pixels))
    if most:
        n = min(n, most)
    return Grid(1, n).clip(width, height)
