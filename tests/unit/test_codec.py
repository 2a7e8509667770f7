"""The raw codec's pure parts, alone: joining edited strips is byte for byte the whole image."""

from __future__ import annotations

import pytest
from images import random_image
from PIL import Image

from tilechord.imaging import Grid, tiles
from tilechord.imaging.raw import join_strips, pack_raw

MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr")


def _pieces(image: Image.Image, grid: Grid) -> list[bytes]:
    """The image cut as the merge receives it: each core packed raw with its box."""
    return [
        pack_raw(image.crop(tile.box), {"box": list(tile.box)})
        for tile in tiles(image.width, image.height, grid, 0)
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows", [2, 3, 7])
def test_full_width_strips_join_into_the_whole_image_in_any_order(mode: str, rows: int) -> None:
    image = random_image(mode, 37, 23, seed=rows)
    if mode in ("P", "PA"):
        image.info["transparency"] = 3
    pieces = _pieces(image, Grid(1, rows))
    joined = join_strips(pieces[::-1], image.size)  # order comes from the boxes
    assert joined is not None
    assert (joined.mode, joined.size, joined.tobytes()) == (image.mode, image.size, image.tobytes())
    if mode in ("P", "PA"):
        assert joined.getpalette() == image.getpalette()
        assert joined.info["transparency"] == 3


@pytest.mark.parametrize("grid", [Grid(2, 1), Grid(2, 2), Grid(3, 1)])
def test_pieces_that_are_not_full_width_strips_are_left_to_the_canvas(grid: Grid) -> None:
    image = random_image("RGB", 40, 30, seed=1)
    assert join_strips(_pieces(image, grid), image.size) is None


def test_strips_with_a_gap_or_different_palettes_are_left_to_the_canvas() -> None:
    image = random_image("P", 20, 20, seed=2)
    top, bottom = _pieces(image, Grid(1, 2))
    assert join_strips([top, bottom], image.size) is not None
    assert join_strips([top], image.size) is None  # the bottom is missing
    other = image.crop((0, 10, 20, 20))
    other.putpalette([255 - v for v in (image.getpalette() or [])])
    assert join_strips([top, pack_raw(other, {"box": [0, 10, 20, 20]})], image.size) is None
