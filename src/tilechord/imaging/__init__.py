"""Imaging: tile geometry, the raw pixel format, and file decoding and encoding.

Pure Pillow code with no Redis or Celery in it, so every piece is unit-tested alone:
:mod:`.geometry` (grids and tiles), :mod:`.raw` (the form tiles travel in),
:mod:`.decode` (sources in, under tilechord's pixel limit) and :mod:`.encode` (results
out).  :mod:`.codec` re-exports the last three until every caller imports them directly.
"""

from __future__ import annotations

from .geometry import Grid, Tile, auto_grid, parse_grid, tiles

__all__ = ["Grid", "Tile", "auto_grid", "parse_grid", "tiles"]
