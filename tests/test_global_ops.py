"""Global operations (contrast, autocontrast, equalize): exact across tiles.

Each tile measures a histogram, the job adds them up, each tile applies the operation
with the sum.  The reference is always Pillow's call on the whole image.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from images import encoded, photo, random_image
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, ImageSequence

from tilechord import Client, UnsupportedMode
from tilechord.imaging.geometry import Grid, tiles
from tilechord.ops import add_histograms, parse_pipeline

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")

Reference = Callable[[Image.Image], Image.Image]

# spec -> Pillow's own call on the whole image (ops-reference.md)
REFERENCES: dict[str, Reference] = {
    "contrast:factor=0.4": lambda im: ImageEnhance.Contrast(im).enhance(0.4),
    "contrast:factor=1.8": lambda im: ImageEnhance.Contrast(im).enhance(1.8),
    "autocontrast": lambda im: ImageOps.autocontrast(im),
    "autocontrast:cutoff=2": lambda im: ImageOps.autocontrast(im, 2),
    "autocontrast:cutoff=20": lambda im: ImageOps.autocontrast(im, 20),
    "equalize": lambda im: ImageOps.equalize(im),
}


def pillow_or_none(reference: Reference, image: Image.Image) -> Image.Image | None:
    try:
        return reference(image)
    except (ValueError, OSError, NotImplementedError):
        return None


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


def same(a: Image.Image, b: Image.Image) -> bool:
    return (
        a.mode == b.mode
        and a.size == b.size
        and a.tobytes() == b.tobytes()
        and (a.mode != "P" or a.getpalette() == b.getpalette())
    )


def quadrants(width: int = 160, height: int = 120) -> Image.Image:
    """A photo whose four quadrants differ strongly in brightness and spread."""
    image = photo(width, height, seed=11)
    w, h = width // 2, height // 2
    out = image.copy()
    out.paste(image.crop((0, 0, w, h)).point(lambda v: v // 5), (0, 0))
    out.paste(image.crop((w, 0, width, h)).point(lambda v: 60 + v // 3), (w, 0))
    out.paste(image.crop((0, h, w, height)).point(lambda v: 200 + v // 5), (0, h))
    return out


# ----------------------------------------------------------------------- pure: one step


@pytest.mark.parametrize("grid", [Grid(1, 1), Grid(2, 1), Grid(3, 3), Grid(5, 5)], ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", list(REFERENCES))
def test_global_step_on_tiles_with_added_histograms_equals_pillow_on_whole_image(
    spec: str, mode: str, grid: Grid
) -> None:
    image = photo(61, 37, mode=mode, seed=3) if mode != "1" else random_image("1", 61, 37, seed=3)
    expected = pillow_or_none(REFERENCES[spec], image)
    pipeline = parse_pipeline([spec])
    if expected is None:
        with pytest.raises(UnsupportedMode):
            pipeline.check_mode(mode)
        return
    assert pipeline.check_mode(mode) == expected.mode
    assert same(tiled(spec, image, grid), expected)


@pytest.mark.parametrize("spec", ["autocontrast:cutoff=2", "equalize", "contrast:factor=1.8"])
def test_naive_per_tile_global_step_would_differ_from_the_whole_image(spec: str) -> None:
    """The quadrant image makes per-tile statistics visibly wrong: the test above has teeth."""
    image = quadrants()
    parts = tiles(image.width, image.height, Grid(4, 4))
    naive = Image.new("RGB", image.size)
    for t in parts:
        naive.paste(REFERENCES[spec](image.crop(t.box)), t.box[:2])
    assert naive.tobytes() != REFERENCES[spec](image).tobytes()


# ------------------------------------------------------------ through the real workers


def test_autocontrast_and_equalize_on_a_4x4_grid_give_the_whole_image_answer(
    client: Client, no_leftovers: None
) -> None:
    image = quadrants()
    for spec in ("autocontrast:cutoff=2", "equalize"):
        out = client.process_image(image, [spec], grid=(4, 4))
        assert same(out, REFERENCES[spec](image)), spec


MIXED: dict[str, Reference] = {
    "gaussian_blur:radius=3,autocontrast:cutoff=2,sharpen,equalize": lambda im: ImageOps.equalize(
        ImageOps.autocontrast(im.filter(ImageFilter.GaussianBlur(3)), 2).filter(ImageFilter.SHARPEN)
    ),
    "rotate:angle=90,contrast:factor=1.5,median:size=3,mirror,equalize": lambda im: ImageOps.equalize(
        ImageOps.mirror(
            ImageEnhance.Contrast(im.transpose(Image.Transpose.ROTATE_90))
            .enhance(1.5)
            .filter(ImageFilter.MedianFilter(3))
        )
    ),
    "equalize,box_blur:radius=2,contrast:factor=0.6": lambda im: ImageEnhance.Contrast(
        ImageOps.equalize(im).filter(ImageFilter.BoxBlur(2))
    ).enhance(0.6),
}


def _steps(text: str) -> list[str]:
    """Split 'a:x=1,b,c:y=2' into specs (a parameter never starts a new step)."""
    steps: list[str] = []
    for item in text.split(","):
        if "=" in item and ":" not in item and steps:
            steps[-1] += "," + item
        else:
            steps.append(item)
    return steps


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (3, 1), (5, 5)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
@pytest.mark.parametrize("pipeline", list(MIXED))
def test_pipelines_mixing_global_neighbourhood_and_geometry_steps_equal_pillow(
    client: Client, pipeline: str, mode: str, grid: tuple[int, int], no_leftovers: None
) -> None:
    image = photo(97, 71, mode=mode, seed=5)
    ops = _steps(pipeline)
    expected = pillow_or_none(MIXED[pipeline], image)
    if expected is None:
        with pytest.raises(UnsupportedMode):
            client.process_image(image, ops, grid=grid)
        return
    assert same(client.process_image(image, ops, grid=grid), expected)


def test_global_steps_run_as_named_stats_and_reduce_stages(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    image = photo(80, 60, seed=2)
    job = client.submit(encoded(image, "PNG"), ["autocontrast", "sharpen", "equalize"], grid=(2, 2))
    job.get(timeout=60)
    tasks = [m["task"] for m in messages() if m["root"] == job.id]
    assert tasks.count("tilechord.split") == 1
    assert tasks.count("tilechord.stats") == 2 * 4  # two global steps, four tiles
    assert tasks.count("tilechord.reduce") == 2
    assert tasks.count("tilechord.edit") == 4
    assert tasks.count("tilechord.merge") == 1


def test_a_pipeline_without_global_steps_keeps_a_single_chord(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    image = photo(80, 60, seed=2)
    job = client.submit(encoded(image, "PNG"), ["gaussian_blur:radius=2", "sharpen"], grid=(2, 2))
    job.get(timeout=60)
    tasks = sorted(m["task"] for m in messages() if m["root"] == job.id)
    assert tasks == ["tilechord.edit"] * 4 + ["tilechord.merge", "tilechord.split"]


def test_each_frame_of_an_animation_gets_its_own_histogram(client: Client, no_leftovers: None) -> None:
    frames = [quadrants(64, 48).point(lambda v, k=k: v // (k + 1)) for k in range(3)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[80, 120, 160], loop=0)
    out = Image.open(io.BytesIO(client.process(data, ["convert:mode=RGB", "autocontrast"], grid=(2, 2))))
    source = Image.open(io.BytesIO(data))
    expected = [ImageOps.autocontrast(f.convert("RGB")) for f in ImageSequence.Iterator(source)]
    reference = Image.open(
        io.BytesIO(
            encoded(
                expected[0], "GIF", save_all=True, append_images=expected[1:], duration=[80, 120, 160], loop=0
            )
        )
    )
    got = [f.convert("RGB").tobytes() for f in ImageSequence.Iterator(out)]
    want = [f.convert("RGB").tobytes() for f in ImageSequence.Iterator(reference)]
    assert len(got) == 3
    assert got == want
    assert [f.info.get("duration") for f in ImageSequence.Iterator(out)] == [80, 120, 160]
