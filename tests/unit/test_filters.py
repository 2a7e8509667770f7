"""The built-in operations, tested alone: pure functions of Pillow images, no Redis, no Celery.

Three promises are checked here.  Each operation equals its Pillow reference
(``ops-reference.md``) on a whole image, called independently of tilechord.  Tiling
changes nothing: cutting an image with the pipeline's halo, editing every piece with
``Pipeline.run_tile`` and pasting the cores back gives the whole-image bytes, mode and
palette.  And each neighbourhood operation's reach is never too small -- measured as the
smallest halo that works on noise -- while being exact where ``filters`` derives it
exactly: one pixel less leaves a seam on some image (noise, or a row found by search).
"""

from __future__ import annotations

import functools
import inspect
import math
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, ImageOps
from reference import KERNELS, PILLOW, PILLOW_REFUSALS, RANK_FILTERS, pillow, refused_by_design, same_image

import tilechord.ops.builtin as filters
from tilechord.errors import InvalidParameter, UnsupportedMode
from tilechord.imaging import Grid, tiles
from tilechord.ops import Kind, Operation, Param, Pipeline, Step, parse_pipeline, registry
from tilechord.ops.reach import gaussian_box_radius

#: The modes every operation is tried on (where Pillow accepts them), then the rarer ones.
MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
RARE_MODES = ("La", "PA", "RGBa", "RGBX", "YCbCr", "LAB", "HSV", "I;16L", "I;16B", "I;16N")

#: Image sizes and grids for the tiling tests: odd sizes, single pixels, lines, more
#: tiles than pixels.
TILINGS = (
    ((37, 23), Grid(1, 1)),
    ((37, 23), Grid(2, 1)),
    ((37, 23), Grid(3, 2)),
    ((37, 23), Grid(5, 5)),
    ((1, 1), Grid(1, 1)),
    ((1, 1), Grid(3, 2)),
    ((1, 17), Grid(1, 5)),
    ((17, 1), Grid(5, 1)),
    ((2, 9), Grid(2, 4)),
    ((12, 5), Grid(5, 5)),
)

# ------------------------------------------------------------------------------ helpers


def noise(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """Uniform random bytes in *mode* (with a random palette for P and PA): seams show on it."""
    if mode == "F":
        return noise("I", width, height, seed).convert("F")  # random bytes could be NaN
    rng = random.Random(f"{mode} {width}x{height} #{seed}")
    length = len(Image.new(mode, (width, height)).tobytes())
    image = Image.frombytes(mode, (width, height), rng.randbytes(length))
    if mode in ("P", "PA"):
        image.putpalette(rng.randbytes(768))
    return image


def tiled(pipeline: Pipeline, image: Image.Image, grid: Grid, halo: int | None = None) -> Image.Image:
    """Cut, edit and paste back as the workers and the merge do, with *halo* (default: the pipeline's)."""
    halo = pipeline.halo if halo is None else halo
    out_mode = pipeline.check_mode(image.mode)
    canvas = Image.new(out_mode, pipeline.output_size(image.size))
    palette: list[int] | None = None
    for tile in tiles(image.width, image.height, grid, halo):
        piece, box = pipeline.run_tile(image.crop(tile.cut), tile.cut, tile.box, image.size)
        assert piece.mode == out_mode, f"{tile.describe()} came out {piece.mode}, check_mode said {out_mode}"
        if out_mode in ("P", "PA"):
            assert piece.palette is not None
            if palette is None:
                palette = piece.getpalette(piece.palette.mode)
                canvas.putpalette(palette or [], piece.palette.mode)
            assert piece.getpalette(piece.palette.mode) == palette, "tiles disagree on the palette"
        canvas.paste(piece, box)
    return canvas


def assert_same(actual: Image.Image, expected: Image.Image) -> None:
    assert (actual.mode, actual.size) == (expected.mode, expected.size)
    got, want = actual.tobytes(), expected.tobytes()
    if got != want:
        first = next(i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y)
        row_bytes = len(want) // expected.height
        raise AssertionError(
            f"{sum(x != y for x, y in zip(got, want, strict=True))} bytes differ; the first in row "
            f"{first // row_bytes}, byte {first % row_bytes} of {row_bytes}"
        )
    if expected.mode in ("P", "PA"):
        assert actual.getpalette() == expected.getpalette()


def works(pipeline: Pipeline, image: Image.Image, grid: Grid, halo: int) -> bool:
    return same_image(tiled(pipeline, image, grid, halo), pipeline.apply(image))


def smallest_working_halo(pipeline: Pipeline, image: Image.Image, grid: Grid, upto: int) -> int:
    """The smallest halo h such that every halo from h to *upto* gives the whole-image result."""
    assert works(pipeline, image, grid, upto), f"{pipeline} shows a seam even with halo {upto}"
    halo = upto
    while halo > 0 and works(pipeline, image, grid, halo - 1):
        halo -= 1
    return halo


def step(spec: str) -> Step:
    return parse_pipeline([spec]).steps[0]


@functools.cache
def builtin_ops() -> tuple[Operation, ...]:
    """tilechord's own operations but the global ones (tiled by measuring, in test_global_steps)."""
    return tuple(
        op for op in registry if op.func.__module__ == filters.__name__ and op.kind is not Kind.GLOBAL
    )


@functools.cache
def accepts(spec: str, mode: str) -> bool:
    try:
        parse_pipeline([spec]).check_mode(mode)
    except UnsupportedMode:
        return False
    return True


# ------------------------------------------------------------------- Pillow references

#: The specs tried here: every built-in operation at its defaults and at other values.  The
#: expected image of each is its Pillow call (support/reference.py), on the whole image.
SPECS: tuple[str, ...] = (
    "grayscale",
    "invert",
    "posterize",
    "posterize:bits=2",
    "solarize",
    "solarize:threshold=77",
    "brightness:factor=1.6",
    "color:factor=0.4",
    "color:factor=2.5",
    "convert",
    "convert:mode=L",
    "convert:mode=RGBA",
    "convert:mode=1",
    "convert:mode=P",
    "gaussian_blur",
    "gaussian_blur:radius=0",
    "gaussian_blur:radius=1.5",
    "box_blur",
    "box_blur:radius=0.5",
    "box_blur:radius=2.3",
    "unsharp_mask",
    "unsharp_mask:radius=2.5,percent=300,threshold=0",
    "median",
    "median:size=5",
    "min",
    "max:size=7",
    "sharpness:factor=0",
    "sharpness:factor=2.5",
    *KERNELS,
    "mirror",
    "flip",
    "rotate",
    "rotate:angle=180",
    "rotate:angle=270",
)

#: Where Pillow works on the whole image but tilechord refuses, on purpose: RGBA to P
#: quantizes the whole image to an adaptive palette, which no tile can know; and the
#: kernels and rank filters, which Pillow refuses on P images, lose the palette of PA ones.
REFUSED_BY_TILECHORD = {
    (spec, mode) for spec in SPECS for mode in ("RGBA", "PA") if refused_by_design(spec, mode)
}


def test_refusals_by_design_are_the_documented_ones() -> None:
    assert ("convert:mode=P", "RGBA") in REFUSED_BY_TILECHORD
    assert {spec for spec, mode in REFUSED_BY_TILECHORD if mode == "PA"} == {
        spec for spec in SPECS if spec.partition(":")[0] in (*RANK_FILTERS, *KERNELS)
    }


def test_every_builtin_operation_has_a_reference_and_is_tried_here() -> None:
    names = {op.name for op in builtin_ops()}
    assert names == {spec.partition(":")[0] for spec in SPECS}
    assert names <= set(PILLOW)


@pytest.mark.parametrize("mode", MODES + RARE_MODES)
@pytest.mark.parametrize("spec", SPECS)
def test_operation_equals_its_pillow_reference_or_refuses_the_mode_as_pillow_does(
    spec: str, mode: str
) -> None:
    image = noise(mode, 19, 13)
    pipeline = parse_pipeline([spec])
    try:
        expected: Image.Image | None = pillow(image, spec)
    except PILLOW_REFUSALS:
        expected = None
    if expected is None or (spec, mode) in REFUSED_BY_TILECHORD:
        with pytest.raises(UnsupportedMode, match=spec.partition(":")[0]):
            pipeline.check_mode(mode)
        return
    assert pipeline.check_mode(mode) == expected.mode
    assert_same(pipeline.apply(image), expected)


@pytest.mark.parametrize(
    ("spec", "mode"),
    [("gaussian_blur", "P"), ("sharpen", "P"), ("median", "P"), ("box_blur", "1"), ("unsharp_mask", "I"),
     ("smooth", "F"), ("gaussian_blur", "I;16"), ("invert", "RGBA"), ("posterize", "CMYK"),
     ("convert:mode=P", "RGBA"), ("convert:mode=PA", "RGBA"), ("median", "PA"), ("smooth_more", "PA")],
)  # fmt: skip
def test_a_mode_the_operation_cannot_take_is_refused_before_any_work(spec: str, mode: str) -> None:
    with pytest.raises(UnsupportedMode) as info:
        parse_pipeline(["mirror", spec]).check_mode(mode)
    message = str(info.value)
    assert spec in message and f"mode {mode}" in message and "convert:mode=" in message


def test_convert_does_not_dither_because_dithering_spreads_error_across_tiles() -> None:
    image = noise("RGB", 40, 30)
    assert_same(filters.convert(image, "1"), image.convert("1", dither=Image.Dither.NONE))
    assert not same_image(filters.convert(image, "1"), image.convert("1"))  # Pillow's default dithers


# -------------------------------------------------------------------------- tiling


@pytest.mark.parametrize(
    ("spec", "mode"),
    [(spec, mode) for spec in SPECS for mode in MODES + RARE_MODES if accepts(spec, mode)],
)
def test_tiled_result_equals_whole_image_result(spec: str, mode: str) -> None:
    pipeline = parse_pipeline([spec])
    for (width, height), grid in TILINGS:
        image = noise(mode, width, height)
        assert_same(tiled(pipeline, image, grid), pipeline.apply(image))


MIXED_PIPELINES = (
    ("gaussian_blur:radius=3", "rotate:angle=90", "sharpen", "mirror"),
    ("mirror", "box_blur:radius=1.5", "flip", "median:size=5"),
    (
        "rotate:angle=270",
        "unsharp_mask:radius=2.3,percent=200,threshold=0",
        "rotate:angle=180",
        "smooth_more",
    ),
    ("sharpness:factor=3", "flip", "max:size=3", "rotate", "edge_enhance_more", "contour"),
    ("convert:mode=RGB", "gaussian_blur:radius=0.5", "grayscale", "min:size=3", "solarize:threshold=90"),
    ("rotate", "rotate", "detail", "mirror", "emboss", "find_edges"),
    (
        "brightness:factor=1.3",
        "box_blur:radius=0",
        "gaussian_blur:radius=0",
        "color:factor=2",
        "posterize:bits=2",
    ),
    ("convert:mode=L", "box_blur:radius=4.5", "rotate:angle=270", "median:size=3", "convert:mode=P"),
)


MIXED_MODES = ("RGB", "L", "RGBA", "P", "CMYK")


def runs_on(specs: tuple[str, ...], mode: str) -> bool:
    try:
        parse_pipeline(list(specs)).check_mode(mode)
    except UnsupportedMode:
        return False
    return True


@pytest.mark.parametrize(
    ("specs", "mode"),
    [(specs, mode) for specs in MIXED_PIPELINES for mode in MIXED_MODES if runs_on(specs, mode)],
    ids=lambda value: " | ".join(value) if isinstance(value, tuple) else value,
)
def test_tiled_pipeline_mixing_geometry_and_neighbourhoods_equals_whole_image(
    specs: tuple[str, ...], mode: str
) -> None:
    pipeline = parse_pipeline(list(specs))
    for (width, height), grid in (*TILINGS, ((60, 7), Grid(4, 2)), ((7, 60), Grid(2, 4))):
        image = noise(mode, width, height, seed=1)
        assert_same(tiled(pipeline, image, grid), pipeline.apply(image))


@pytest.mark.parametrize("specs", MIXED_PIPELINES, ids=" | ".join)
def test_each_mixed_pipeline_runs_on_at_least_two_tested_modes(specs: tuple[str, ...]) -> None:
    assert sum(runs_on(specs, mode) for mode in MIXED_MODES) >= 2  # so the test above is not vacuous


# ----------------------------------------------------------------- property: any pipeline

#: Upper limits for drawing parameters, so examples stay fast (the bounds go higher).
CAPS = {"radius": 8.0, "factor": 4.0, "percent": 500, "size": 7}


def param_values(param: Param) -> st.SearchStrategy[object]:
    cap = CAPS.get(param.name)
    if param.choices is not None:
        return st.sampled_from([c for c in param.choices if cap is None or c <= cap])
    lo = param.minimum if param.minimum is not None else -1000
    hi = min(param.maximum if param.maximum is not None else 1000, cap if cap is not None else math.inf)
    if param.type is float:
        nice = [v for v in (0.0, 0.5, 1.0, 1.5, 2.3, 5.0) if lo <= v <= hi]
        return st.sampled_from(nice) | st.floats(lo, hi, allow_nan=False)
    if param.type is int:
        return st.integers(int(lo), int(hi))
    return st.booleans()


@st.composite
def pipelines(draw: st.DrawFn, mode: str) -> Pipeline:
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 4))):
        candidates = [op for op in builtin_ops() if accepts(op.name, mode)]
        op = draw(st.sampled_from(candidates))
        chosen = op.bind({p.name: draw(param_values(p)) for p in op.params})
        try:
            mode = Pipeline((chosen,)).check_mode(mode)
        except UnsupportedMode:
            assume(False)  # e.g. convert La to RGB: Pillow cannot
        steps.append(chosen)
    return Pipeline(tuple(steps))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_pipeline_on_any_image_tiles_seamlessly(data: st.DataObject) -> None:
    mode = data.draw(st.sampled_from(MODES + RARE_MODES), label="mode")
    pipeline = data.draw(pipelines(mode), label="pipeline")
    width, height = (
        data.draw(st.integers(1, 120), label="width"),
        data.draw(st.integers(1, 120), label="height"),
    )
    grid = Grid(data.draw(st.integers(1, 5), label="cols"), data.draw(st.integers(1, 5), label="rows"))
    image = noise(mode, width, height, seed=data.draw(st.integers(0, 3), label="seed"))
    assert_same(tiled(pipeline, image, grid), pipeline.apply(image))


# --------------------------------------------------------------------------------- reach

#: The reach of each operation as a number, where filters derives it from Pillow's C code.
EXPECTED_REACH = {
    "gaussian_blur:radius=0": 0,
    "gaussian_blur:radius=0.5": 3,
    "gaussian_blur": 6,
    "gaussian_blur:radius=3": 9,
    "gaussian_blur:radius=5": 15,  # box radius 4.45 per pass: 3 passes of 5 pixels
    "gaussian_blur:radius=200": 600,  # box radius 199.499: about the radius itself
    "box_blur:radius=0": 0,
    "box_blur:radius=0.5": 1,
    "box_blur": 2,
    "box_blur:radius=2.3": 3,
    "box_blur:radius=5": 5,  # fw = 2 of 2**24 for the 6th pixel: it never tips a rounding
    "box_blur:radius=104": 105,  # ...but from radius 104 on it can, for some sums
    "unsharp_mask:radius=3": 9,
    "median:size=1": 0,
    "median:size=15": 7,
    "min:size=5": 2,
    "max": 1,
    "sharpness:factor=2": 1,
    "sharpen": 1,
    "contour": 1,
    "smooth_more": 2,
    "grayscale": 0,
    "convert:mode=P": 0,
    "rotate:angle=270": 0,
    "mirror": 0,
}


@pytest.mark.parametrize(("spec", "reach"), EXPECTED_REACH.items())
def test_reach_formula_values(spec: str, reach: int) -> None:
    assert step(spec).reach == reach


def test_pipeline_halo_is_the_sum_of_the_reaches() -> None:
    pipeline = parse_pipeline(["gaussian_blur:radius=5", "rotate", "sharpen", "mirror", "median:size=5"])
    assert pipeline.halo == 15 + 1 + 2


#: Images (mode, width, height, grid) to measure the reach on.  Blurs are separable, so a
#: wide image cut down the middle and a tall one cut across show each direction, long
#: enough that the cut edges stay inside; kernels and rank filters get 2-D images.
def _separable(reach: int) -> list[tuple[str, int, int, Grid]]:
    long = 2 * reach + 8
    return [("L", long, 3, Grid(2, 1)), ("RGB", 3, long, Grid(1, 2)), ("LA", long, long, Grid(2, 2))]


_SQUARES = [("L", 24, 24, Grid(3, 3)), ("RGB", 23, 17, Grid(2, 2)), ("I", 20, 20, Grid(2, 3))]

MEASURED = [
    *[f"gaussian_blur:radius={r}" for r in (0, 0.25, 0.5, 1, 1.5, 2, 2.3, 3, 4.5, 5, 7.25, 10)],
    *[f"box_blur:radius={r}" for r in (0, 0.25, 0.5, 1, 1.5, 2, 2.3, 3, 4.5, 5, 7.25, 10, 33.3)],
    *[f"unsharp_mask:radius={r},threshold=0" for r in (0.5, 1.5, 2.3, 3, 5)],
    *[f"{name}:size={n}" for name in ("median", "min", "max") for n in (1, 3, 5, 9, 15)],
    *["sharpness:factor=0", "sharpness:factor=3"],
    *KERNELS,
]

#: Where noise alone shows the formula exact: a halo one pixel smaller leaves a seam.
#: (A 3-pass Gaussian's last pixel per pass weighs little, so noise rarely needs all
#: of it; the rows of ADVERSARIAL_ROWS below show it does for some images.)
EXACT_ON_NOISE = {spec for spec in MEASURED if not spec.startswith(("gaussian", "unsharp"))} | {
    "gaussian_blur:radius=0",
    "gaussian_blur:radius=2",
    "gaussian_blur:radius=3",
}


@pytest.mark.parametrize("spec", MEASURED)
def test_reach_formula_is_never_below_the_measured_minimum(spec: str) -> None:
    pipeline = parse_pipeline([spec])
    reach = pipeline.halo
    separable = spec.startswith(("gaussian", "box", "unsharp"))
    cases = _separable(reach) if separable else _SQUARES
    measured = 0
    for seed, (mode, width, height, grid) in enumerate(cases):
        image = noise(mode if accepts(spec, mode) else "CMYK", width, height, seed)
        measured = max(measured, smallest_working_halo(pipeline, image, grid, reach + 1))
    assert measured <= reach
    if spec in EXACT_ON_NOISE:
        assert measured == reach, f"{spec}: formula {reach}, but noise needs only {measured}"
    else:
        assert reach - measured <= 3, f"{spec}: formula {reach} is far above the measured {measured}"


#: One-row images, found by searching a few million noise rows, on which a Gaussian blur
#: (and unsharp mask, threshold 0, for the radii listed) needs its full reach: each of
#: the three box passes carries the change through its faint outermost pixel.
ADVERSARIAL_ROWS = {
    0.5: ("fdeab8e0345e1f84d49f", False),
    1.5: ("0bc07e55a5e7a4a830fba62c24c70248", True),
    2.3: ("cec9fda49d7e6e88cfdf1b5626a9f928", True),
    3: ("613c592d6c050093f4ee718623a2bc9c0f1ef87bc5bc", True),
    5: ("666c1b3de5f38d969003fc31d8b1967592ff7000b1bf716305bdf623fdb67e03f913", True),
}


@pytest.mark.parametrize("radius", ADVERSARIAL_ROWS)
def test_gaussian_reach_is_exact_one_pixel_less_leaves_a_seam(radius: float) -> None:
    row, with_unsharp = ADVERSARIAL_ROWS[radius]
    image = Image.frombytes("L", (len(row) // 2, 1), bytes.fromhex(row))
    specs = [f"gaussian_blur:radius={radius}"]
    if with_unsharp:
        specs.append(f"unsharp_mask:radius={radius},threshold=0")
    for spec in specs:
        pipeline = parse_pipeline([spec])
        reach = pipeline.halo
        assert image.width == 2 * reach + 4
        assert works(pipeline, image, Grid(2, 1), reach)
        assert not works(pipeline, image, Grid(2, 1), reach - 1), f"{spec}: no seam at {reach - 1}"


def _c_float(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def tipping_row(radius: float) -> Image.Image | None:
    """A row on which a box blur of *radius* needs the faint pixel just beyond int(radius).

    Pillow weighs the window's pixels by ``ww`` and the pixel beyond each end by ``fw``
    (fractions of 2**24) and rounds.  Find a window sum that a change of 255 in that far
    pixel carries over a rounding step, and lay it out at the border between two tiles.
    """
    one = 1 << 24
    whole = int(radius)
    ww = int(_c_float(one / _c_float(2 * _c_float(radius) + 1)))
    fw = (one - (2 * whole + 1) * ww) // 2
    for total in range(255 * (2 * whole + 1) + 1):
        for left in (0, 255):
            low = (total * ww + left * fw + (1 << 23)) >> 24
            if low != (total * ww + (left + 255) * fw + (1 << 23)) >> 24:
                width = 4 * whole + 8
                x = width // 2 - 1  # the left tile's last pixel; its cut ends at x + whole
                row = [0] * width
                row[x - whole - 1], row[x + whole + 1] = left, 255
                for i in range(x - whole, x + whole):  # row[x + whole] stays 0
                    row[i] = min(255, total - sum(row[x - whole : i]))
                assert sum(row[x - whole : x + whole + 1]) == total
                return Image.frombytes("L", (width, 1), bytes(row))
    return None


@pytest.mark.parametrize("radius", [104, 105, 200, 100.001, 20.5])
def test_box_blur_reach_counts_the_far_pixel_exactly_when_it_can_tip_a_rounding(radius: float) -> None:
    pipeline = parse_pipeline([("box_blur", {"radius": radius})])
    image = tipping_row(radius)
    assert image is not None
    assert pipeline.halo == int(radius) + 1
    assert works(pipeline, image, Grid(2, 1), pipeline.halo)
    assert not works(pipeline, image, Grid(2, 1), pipeline.halo - 1)


@pytest.mark.parametrize("radius", [5, 11, 20, 50, 103, 20.00001])
def test_box_blur_far_pixel_too_faint_to_matter_adds_no_reach(radius: float) -> None:
    assert tipping_row(radius) is None
    assert step(f"box_blur:radius={radius}").reach == int(radius)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(["gaussian_blur", "box_blur", "unsharp_mask"]),
    radius=st.floats(0, 12) | st.integers(0, 12).map(float) | st.sampled_from([0.5, 1.5, 2.3, 4.45]),
    mode=st.sampled_from(["L", "RGB", "LA", "CMYK"]),
    seed=st.integers(0, 10**6),
)
def test_blur_reach_is_enough_for_any_radius(name: str, radius: float, mode: str, seed: int) -> None:
    pipeline = parse_pipeline(
        [(name, {"radius": radius, **({"threshold": 0} if name == "unsharp_mask" else {})})]
    )
    long = 2 * pipeline.halo + 6
    assert works(pipeline, noise(mode, long, 2, seed), Grid(2, 1), pipeline.halo)
    assert works(pipeline, noise(mode, 2, long, seed), Grid(1, 2), pipeline.halo)


def test_gaussian_box_radius_matches_the_paper_formula() -> None:
    for radius in (0.5, 1, 2, 5, 10, 50, 200):
        sigma2 = radius * radius / 3
        box_l = math.floor((math.sqrt(12 * sigma2 + 1) - 1) / 2)
        a = (2 * box_l + 1) * (box_l * (box_l + 1) - 3 * sigma2) / (6 * (sigma2 - (box_l + 1) ** 2))
        assert gaussian_box_radius(radius) == pytest.approx(box_l + a, abs=1e-4)


# ---------------------------------------------------------------------------- geometry


@settings(max_examples=100, deadline=None)
@given(
    spec=st.sampled_from(["mirror", "flip", "rotate", "rotate:angle=180", "rotate:angle=270"]),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    data=st.data(),
)
def test_geometry_map_box_says_where_pixels_land(
    spec: str, width: int, height: int, data: st.DataObject
) -> None:
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    image = Image.new("L", (width, height))
    image.paste(255, (x0, y0, x1, y1))
    chosen = step(spec)
    out = pillow(image, spec)
    assert chosen.kind is Kind.GEOMETRY
    assert chosen.map_size((width, height)) == out.size
    assert chosen.map_box((x0, y0, x1, y1), (width, height)) == out.getbbox()


# ------------------------------------------------------------------ parameters and registry


@pytest.mark.parametrize(
    "spec",
    [
        "gaussian_blur:size=3",  # unknown parameter
        "sharpen:amount=2",
        "gaussian_blur:radius=abc",  # bad type
        "median:size=3.5",
        ("posterize", {"bits": 2.5}),
        ("solarize", {"threshold": True}),
        ("convert", {"mode": 1}),
        "gaussian_blur:radius=-1",  # out of range
        "box_blur:radius=201",
        "unsharp_mask:percent=-5",
        "unsharp_mask:threshold=256",
        "posterize:bits=0",
        "posterize:bits=9",
        "solarize:threshold=300",
        "brightness:factor=-0.5",
        "color:factor=101",
        "sharpness:factor=1e9",
        "gaussian_blur:radius=nan",
        "box_blur:radius=inf",
        "median:size=17",
        "median:size=-1",
        "median:size=4",  # even window sizes have no centre
        "min:size=2",
        "max:size=14",
        "rotate:angle=45",
        "rotate:angle=-90",
        "convert:mode=XYZ",
        "convert:mode=rgb",
    ],
)
def test_bad_parameters_are_refused_naming_the_operation(spec: str | tuple[str, dict[str, object]]) -> None:
    name = spec[0] if isinstance(spec, tuple) else spec.partition(":")[0]
    with pytest.raises(InvalidParameter, match=rf"^{name}\b"):
        parse_pipeline([spec])


@pytest.mark.parametrize("name", ["median", "min", "max"])
def test_rank_filter_sizes_must_be_odd(name: str) -> None:
    with pytest.raises(
        InvalidParameter, match=rf"{name}:size must be one of 1, 3, 5, 7, 9, 11, 13, 15, not '?4'?"
    ):
        parse_pipeline([f"{name}:size=4"])
    function = registry.get(name).func
    with pytest.raises(InvalidParameter, match=rf"{name}:size must be odd"):
        function(noise("L", 5, 5), size=6)  # called directly, outside a pipeline


def test_builtin_operations_have_the_documented_kinds() -> None:
    kinds = {op.name: op.kind for op in builtin_ops()}
    pixel = {"grayscale", "invert", "posterize", "solarize", "brightness", "color", "convert"}
    geometry = {"mirror", "flip", "rotate"}
    assert {n for n, k in kinds.items() if k is Kind.PIXEL} == pixel
    assert {n for n, k in kinds.items() if k is Kind.GEOMETRY} == geometry
    assert {n for n, k in kinds.items() if k is Kind.NEIGHBOURHOOD} == set(kinds) - pixel - geometry


@pytest.mark.parametrize("op", builtin_ops(), ids=lambda op: op.name)
def test_each_operation_explains_itself_in_one_line_and_bounds_its_numbers(op: Operation) -> None:
    assert op.doc and "\n" not in op.doc and len(op.doc) <= 100
    for param in op.params:
        assert not param.required
        if param.type in (int, float):
            assert param.choices is not None or (param.minimum is not None and param.maximum is not None)


@pytest.mark.parametrize(
    ("spec", "pillow"),
    [
        ("gaussian_blur", ImageFilter.GaussianBlur),
        ("unsharp_mask", ImageFilter.UnsharpMask),
        ("median", ImageFilter.MedianFilter),
        ("min", ImageFilter.MinFilter),
        ("max", ImageFilter.MaxFilter),
        ("solarize", ImageOps.solarize),
    ],
)
def test_parameter_defaults_are_pillows(spec: str, pillow: Callable[..., object]) -> None:
    theirs = inspect.signature(pillow).parameters
    ours = step(spec).params
    assert ours and all(ours[name] == theirs[name].default for name in ours)


def test_convert_offers_every_mode_pillow_converts_to() -> None:
    choices = step("convert").op.param("mode").choices
    assert choices is not None
    source = noise("RGB", 3, 2)
    for mode in choices:
        assert source.convert(mode).mode == mode
    assert not accepts("convert:mode=RGB", "La")  # Pillow converts La only to LA
