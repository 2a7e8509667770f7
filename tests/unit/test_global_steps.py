"""Global operations (contrast, autocontrast, equalize), one step alone: exact across tiles.

Each tile measures a histogram, the histograms are added up, each tile applies the
operation with the sum: what the workers do (``tests/test_global_ops.py`` runs it on
them), here as pure functions.  The reference is always Pillow's call on the whole image.
"""

from __future__ import annotations

import pytest
from images import photo, quadrants, random_image
from PIL import Image
from reference import pillow, reference_or_none, same_image

from tilechord import UnsupportedMode
from tilechord.imaging import Grid, tiles
from tilechord.ops import add_histograms, parse_pipeline

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")

SPECS = (
    "contrast:factor=0.4",
    "contrast:factor=1.8",
    "autocontrast",
    "autocontrast:cutoff=2",
    "autocontrast:cutoff=20",
    "equalize",
)


def tiled(spec: str, image: Image.Image, grid: Grid) -> Image.Image:
    """The global step as the workers run it: measure every core, add, apply per tile."""
    (step,) = parse_pipeline([spec]).steps
    parts = tiles(image.width, image.height, grid)
    whole = add_histograms(step.measure(image.crop(t.box)) for t in parts)
    out: Image.Image | None = None
    for t in parts:
        piece = step.apply_measured(image.crop(t.box), whole)
        if out is None:
            out = Image.new(piece.mode, image.size)
            if piece.mode == "P":
                out.putpalette(piece.getpalette() or [])
        out.paste(piece, t.box[:2])
    assert out is not None
    return out


@pytest.mark.parametrize("grid", [Grid(1, 1), Grid(2, 1), Grid(3, 3), Grid(5, 5)], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", SPECS)
def test_global_step_on_tiles_with_added_histograms_equals_pillow_on_whole_image(
    spec: str, mode: str, grid: Grid
) -> None:
    image = photo(61, 37, mode=mode, seed=3) if mode != "1" else random_image("1", 61, 37, seed=3)
    expected = reference_or_none(image, [spec])
    pipeline = parse_pipeline([spec])
    if expected is None:
        with pytest.raises(UnsupportedMode):
            pipeline.check_mode(mode)
        return
    assert pipeline.check_mode(mode) == expected.mode
    assert same_image(tiled(spec, image, grid), expected)


@pytest.mark.parametrize("spec", ["autocontrast:cutoff=2", "equalize", "contrast:factor=1.8"])
def test_naive_per_tile_global_step_would_differ_from_the_whole_image(spec: str) -> None:
    """The quadrant image makes per-tile statistics visibly wrong: the test above has teeth."""
    image = quadrants()
    parts = tiles(image.width, image.height, Grid(4, 4))
    naive = Image.new("RGB", image.size)
    for t in parts:
        naive.paste(pillow(image.crop(t.box), spec), t.box[:2])
    assert naive.tobytes() != pillow(image, spec).tobytes()
