"""Kernels and rank filters on palette images (P, PA): what Pillow does, and what tilechord does.

Pillow refuses P ("cannot filter palette images").  PA it filters band by band, the palette
indices as if they were grey levels, and returns an image without its palette, which saves
and converts as black.  tilechord refuses PA for that reason, says so in the error and the
operations table, and points to ``convert:mode=RGBA``, which tiles seamlessly.  These tests
check each of those claims against Pillow itself, so a Pillow that changes shows here.

Pure: Pillow on small images, no Redis, no processes.
"""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image, ImageFilter
from reference import KERNELS, PILLOW_REFUSALS, RANK_FILTERS, pillow

from tilechord.errors import UnsupportedMode
from tilechord.imaging.geometry import Grid, tiles
from tilechord.ops import parse_pipeline, registry, table

#: Every kernel and rank filter, at its default and (rank filters) a larger window.
SPECS = (*KERNELS, *RANK_FILTERS, "median:size=5", "max:size=7")

#: Sizes and grids: odd sizes, more tiles than a kernel's reach, single rows and columns.
TILINGS = (
    ((37, 23), Grid(1, 1)),
    ((37, 23), Grid(3, 2)),
    ((37, 23), Grid(5, 5)),
    ((2, 9), Grid(2, 4)),
    ((17, 1), Grid(5, 1)),
    ((1, 1), Grid(3, 2)),
)


def palette_image(mode: str, size: tuple[int, int] = (23, 17)) -> Image.Image:
    """A P or PA image of varied indices, a random-looking palette and (PA) a gradient alpha."""
    width, height = size
    indices = bytes((x * 7 + y * 13 + (x * y) % 11) % 256 for y in range(height) for x in range(width))
    image = Image.frombytes("P", size, indices)
    image.putpalette(bytes((i * 37 + 11) % 256 for i in range(768)))
    if mode == "PA":
        image = image.convert("PA")
        image.putalpha(Image.linear_gradient("L").resize(size))
    return image


def from_tiff(image: Image.Image) -> Image.Image:
    """*image* written as TIFF and read back, as a corpus file comes in."""
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    loaded = Image.open(io.BytesIO(buffer.getvalue()))
    loaded.load()
    return loaded


def tiled(specs: list[str], image: Image.Image, grid: Grid) -> Image.Image:
    """Cut with the pipeline's halo, edit each tile and paste it back, as the workers and merge do."""
    pipeline = parse_pipeline(specs)
    canvas = Image.new(pipeline.check_mode(image.mode), image.size)
    for tile in tiles(image.width, image.height, grid, pipeline.halo):
        piece, box = pipeline.run_tile(image.crop(tile.cut), tile.cut, tile.box, image.size)
        canvas.paste(piece, box)
    return canvas


# ----------------------------------------------------------------- what Pillow does


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("source", ["memory", "tiff"])
def test_pillow_filters_pa_into_an_image_that_has_lost_its_palette(spec: str, source: str) -> None:
    """The reason the table gives for the refusal, checked on Pillow (a TIFF, as the corpus had)."""
    image = palette_image("PA")
    if source == "tiff":
        image = from_tiff(image)
    assert image.getpalette(), "the input has its palette"
    result = pillow(image, spec)
    assert result.mode == "PA" and result.size == image.size
    assert not result.getpalette(), f"Pillow kept the palette of a PA image through {spec}: drop the refusal"
    saved = from_tiff(result)
    assert set(saved.convert("RGBA").tobytes()[0::4]) == {0}, "the saved result should be black"
    indices = result.getchannel(0).tobytes()
    assert indices == pillow(image.getchannel(0), spec).tobytes(), "the indices are filtered as grey levels"


@pytest.mark.parametrize("spec", SPECS)
def test_pillow_refuses_p_and_so_does_tilechord(spec: str) -> None:
    with pytest.raises(PILLOW_REFUSALS, match="palette"):
        pillow(palette_image("P"), spec)
    with pytest.raises(UnsupportedMode, match=rf"^{re.escape(spec)} cannot work on mode P images"):
        parse_pipeline([spec]).check_mode("P")


# -------------------------------------------------------------- what tilechord does


@pytest.mark.parametrize("spec", SPECS)
def test_pa_is_refused_with_the_reason_and_a_conversion_that_keeps_the_alpha(spec: str) -> None:
    with pytest.raises(UnsupportedMode) as info:
        parse_pipeline(["mirror", spec]).check_mode("PA")
    message = str(info.value)
    name = spec.partition(":")[0]
    assert message.startswith(f"{name} cannot work on mode PA images"), message
    assert "palette indices" in message and "black" in message, message
    assert "'convert:mode=RGBA'" in message, message  # RGB would drop the alpha
    assert "\n" not in message


@pytest.mark.parametrize("spec", SPECS)
def test_the_tilechord_function_refuses_pa_too(spec: str) -> None:
    """Called directly (as a plugin or a worker would), not only in the dry run."""
    step = parse_pipeline([spec]).steps[0]
    with pytest.raises(UnsupportedMode, match="mode PA"):
        step.apply(palette_image("PA"))


@pytest.mark.parametrize("name", [*KERNELS, *RANK_FILTERS])
def test_the_operations_table_says_why_pa_is_refused(name: str) -> None:
    refuses = registry.get(name).refuses
    assert "PA" in refuses and "palette indices" in refuses and "black" in refuses, refuses
    assert "convert:mode=RGBA" in refuses, refuses
    row = next(line for line in table.document().splitlines() if line.startswith(f"| `{name}"))
    assert row.endswith(f"| {refuses} |")


def test_the_document_explains_the_pa_refusal_in_its_notes() -> None:
    notes = table.document().partition("## Notes")[2]
    assert "PA" in notes and "convert:mode=RGBA" in notes and "black" in notes


@pytest.mark.parametrize(("size", "grid"), TILINGS, ids=lambda v: str(v))
@pytest.mark.parametrize("spec", SPECS)
def test_converting_pa_to_rgba_first_tiles_seamlessly_and_equals_pillow(
    spec: str, size: tuple[int, int], grid: Grid
) -> None:
    image = palette_image("PA", size)
    expected = pillow(image.convert("RGBA"), spec)
    actual = tiled(["convert:mode=RGBA", spec], image, grid)
    assert (actual.mode, actual.size) == (expected.mode, expected.size)
    assert actual.tobytes() == expected.tobytes()


def test_the_helpers_tiling_is_the_workers_tiling() -> None:
    """A guard on :func:`tiled`: an RGBA sharpen on a 3x2 grid is Pillow's (no seam hides here)."""
    image = palette_image("PA", (37, 23)).convert("RGBA")
    assert tiled(["sharpen"], image, Grid(3, 2)).tobytes() == image.filter(ImageFilter.SHARPEN).tobytes()
