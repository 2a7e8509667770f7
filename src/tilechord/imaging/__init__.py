"""Imaging: tile geometry, the raw pixel format, and file decoding and encoding.

Pure Pillow code with no Redis or Celery in it, so every piece is unit-tested alone:
:mod:`.geometry` (grids and tiles), :mod:`.raw` (the form tiles travel in),
:mod:`.decode` (sources in, under tilechord's pixel limit), :mod:`.frames` (every frame's
mode and size, checked before a job is sent), :mod:`.encode` (results out) and
:mod:`.writers` (which formats Pillow really writes).  For images too big for one
process: :mod:`.regions` (a TIFF's region read from its tiles or strips alone),
:mod:`.strips` (a PNG decoded strip by strip from the top) and :mod:`.tiffout` (a tiled
BigTIFF written from compressed tiles as they come).
"""

from __future__ import annotations

from .geometry import Grid, Tile, auto_grid, parse_grid, tiles

__all__ = ["Grid", "Tile", "auto_grid", "parse_grid", "tiles"]
