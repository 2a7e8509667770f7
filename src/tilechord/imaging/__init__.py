"""Imaging: tile geometry, the raw pixel format, and file decoding and encoding.

Pure Pillow code with no Redis or Celery in it, so every piece is unit-tested alone.
"""

from __future__ import annotations

from .geometry import Grid, Tile, auto_grid, parse_grid, tiles

__all__ = ["Grid", "Tile", "auto_grid", "parse_grid", "tiles"]
