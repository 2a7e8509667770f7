"""Property: any pipeline, on any image, on any grid, through the real workers, equals Pillow.

Hypothesis draws an image (mode, size from 1 to 300, random content), a pipeline of one
to four registered operations with parameters within their bounds, and a grid up to 5x5.
The job runs on the session's real Celery workers over Redis; the expected result is the
chain of Pillow calls of ``../shared/ops-reference.md``, written out here independently of
tilechord's own operation functions, on the whole image.  Same mode, size, bytes, palette
and transparency.  Where Pillow refuses a step for the image's mode, tilechord must refuse
the job before running it, with its typed error.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from images import random_image
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from tilechord import Client
from tilechord.errors import InvalidParameter, UnsupportedMode
from tilechord.ops import Kind, Operation, Param, registry

#: The kinds of operation drawn: all of them, global ones (stats/reduce stages) included.
KINDS = frozenset({Kind.PIXEL, Kind.NEIGHBOURHOOD, Kind.GEOMETRY, Kind.GLOBAL})

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")

#: Upper limits on drawn parameter values where large ones only cost time (the
#: operations accept more: their bounds are checked in test_filters).
CAPS: dict[str, float] = {"radius": 6.0, "size": 5}

#: Exceptions by which Pillow refuses an image mode (or a conversion).
PILLOW_REFUSALS = (ValueError, OSError, TypeError, NotImplementedError)

# ------------------------------------------------------------------ Pillow references

F = ImageFilter
KERNELS = (
    "sharpen", "smooth", "smooth_more", "detail", "edge_enhance", "edge_enhance_more",
    "emboss", "find_edges", "contour",
)  # fmt: skip
RANK_FILTERS = ("median", "min", "max")
_ROTATIONS = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def _kernel(name: str) -> Callable[[Image.Image], Image.Image]:
    kernel = getattr(ImageFilter, name.upper())
    return lambda im: im.filter(kernel)


#: Operation name -> the Pillow call of ops-reference.md, taking the operation's parameters.
REFERENCES: dict[str, Callable[..., Image.Image]] = {
    "grayscale": lambda im: ImageOps.grayscale(im),
    "invert": lambda im: ImageOps.invert(im),
    "posterize": lambda im, bits: ImageOps.posterize(im, bits),
    "solarize": lambda im, threshold: ImageOps.solarize(im, threshold),
    "brightness": lambda im, factor: ImageEnhance.Brightness(im).enhance(factor),
    "color": lambda im, factor: ImageEnhance.Color(im).enhance(factor),
    # README: convert never dithers (dithering carries error from pixel to pixel).
    "convert": lambda im, mode: im.convert(mode, dither=Image.Dither.NONE),
    "gaussian_blur": lambda im, radius: im.filter(F.GaussianBlur(radius)),
    "box_blur": lambda im, radius: im.filter(F.BoxBlur(radius)),
    "unsharp_mask": lambda im, radius, percent, threshold: im.filter(
        F.UnsharpMask(radius, percent, threshold)
    ),
    "median": lambda im, size: im.filter(F.MedianFilter(size)),
    "min": lambda im, size: im.filter(F.MinFilter(size)),
    "max": lambda im, size: im.filter(F.MaxFilter(size)),
    "sharpness": lambda im, factor: ImageEnhance.Sharpness(im).enhance(factor),
    **{name: _kernel(name) for name in KERNELS},
    "mirror": lambda im: ImageOps.mirror(im),
    "flip": lambda im: ImageOps.flip(im),
    "rotate": lambda im, angle: im.transpose(_ROTATIONS[angle]),
    "contrast": lambda im, factor: ImageEnhance.Contrast(im).enhance(factor),
    "autocontrast": lambda im, cutoff: ImageOps.autocontrast(im, cutoff),
    "equalize": lambda im: ImageOps.equalize(im),
}


def refused_by_design(name: str, params: Mapping[str, Any], mode: str) -> bool:
    """Where Pillow works on a whole image but tilechord refuses, as its docs say.

    RGBA to P or PA quantizes the whole image (no tile can know the palette), and the
    kernels and rank filters, which Pillow refuses on P, silently drop a PA palette.
    """
    if name == "convert" and mode == "RGBA" and params["mode"] in ("P", "PA"):
        return True
    return mode == "PA" and name in KERNELS + RANK_FILTERS


Steps = tuple[tuple[str, dict[str, Any]], ...]


def reference(image: Image.Image, steps: Steps) -> Image.Image | None:
    """The pipeline as Pillow runs it on the whole image; None where it is refused."""
    for name, params in steps:
        if refused_by_design(name, params, image.mode):
            return None
        try:
            image = REFERENCES[name](image, **params)
        except PILLOW_REFUSALS:
            return None
    return image


# ---------------------------------------------------------------------- strategies


@functools.cache
def drawn_operations() -> tuple[Operation, ...]:
    """tilechord's own operations of the drawn kinds (not the test plugin's)."""
    return tuple(op for op in registry if op.kind in KINDS and op.func.__module__.startswith("tilechord."))


@functools.cache
def probe(mode: str) -> Image.Image:
    return random_image(mode, 7, 6, seed=1)


def accepts(name: str, params: Mapping[str, Any], mode: str) -> str | None:
    """The mode Pillow gives for one step on a small image of *mode*, or None if refused."""
    out = reference(probe(mode), ((name, dict(params)),))
    return None if out is None else out.mode


def param_values(op: Operation, param: Param, mode: str | None) -> st.SearchStrategy[Any]:
    """Values within the parameter's bounds or choices (capped where large means slow).

    With a *mode*, choices that Pillow refuses on it (convert's target modes) are left out.
    """
    cap = CAPS.get(param.name, math.inf)
    if param.choices is not None:
        choices = [c for c in param.choices if not isinstance(c, (int, float)) or c <= cap]
        if mode is not None:
            defaults = {p.name: p.default for p in op.params}
            choices = [c for c in choices if accepts(op.name, {**defaults, param.name: c}, mode)]
        return st.sampled_from(choices)
    lo = -1e6 if param.minimum is None else param.minimum
    hi = min(1e6 if param.maximum is None else param.maximum, cap)
    if param.type is float:
        nice = [v for v in (0.0, 0.5, 1.0, 1.5, 2.0, 2.3, hi) if lo <= v <= hi]
        return st.sampled_from(nice) | st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    if param.type is int:
        return st.integers(math.ceil(lo), math.floor(hi))
    if param.type is bool:
        return st.booleans()
    raise AssertionError(f"no strategy for {op.name}:{param.name} of type {param.type.__name__}")


@dataclass(frozen=True)
class Case:
    """One drawn example: what to build the image from, the pipeline and the grid."""

    mode: str
    width: int
    height: int
    seed: int = 0
    levels: int | None = None  # None: noise; else each byte from that many values
    transparency: int | None = None  # P images: the transparent index
    steps: Steps = field(default=())
    grid: tuple[int, int] = (2, 2)

    def image(self) -> Image.Image:
        image = random_image(self.mode, self.width, self.height, self.seed, self.levels)
        if self.transparency is not None:
            image.info["transparency"] = self.transparency
        return image


@st.composite
def pipelines(draw: st.DrawFn, mode: str) -> Steps:
    """One to four steps.  Mostly steps Pillow accepts on the mode they meet (so most
    examples run a job); one pipeline in six ignores modes, to check refusals."""
    any_mode = draw(st.integers(0, 5), label="ignore modes") == 0
    steps: list[tuple[str, dict[str, Any]]] = []
    current: str | None = mode
    for _ in range(draw(st.integers(1, 4), label="steps")):
        ops = drawn_operations()
        if not any_mode and current is not None:
            ops = tuple(op for op in ops if _accepts_some(op, current))
        op = draw(st.sampled_from(ops))
        params = {p.name: draw(param_values(op, p, None if any_mode else current)) for p in op.params}
        steps.append((op.name, params))
        current = None if current is None else accepts(op.name, params, current)
        if current is None and not any_mode:
            assume(False)  # a parameter value Pillow refuses on this mode (rare)
    return tuple(steps)


def _accepts_some(op: Operation, mode: str) -> bool:
    defaults = {p.name: p.default for p in op.params}
    if any(p.choices is not None for p in op.params):
        return any(
            accepts(op.name, {**defaults, p.name: c}, mode) for p in op.params if p.choices for c in p.choices
        )
    return accepts(op.name, defaults, mode) is not None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    mode = draw(st.sampled_from(MODES), label="mode")
    return Case(
        mode=mode,
        width=draw(st.integers(1, 300), label="width"),
        height=draw(st.integers(1, 300), label="height"),
        seed=draw(st.integers(0, 2**16), label="seed"),
        levels=draw(st.none() | st.integers(1, 6), label="levels"),
        transparency=draw(st.none() | st.integers(0, 255), label="transparency") if mode == "P" else None,
        steps=draw(pipelines(mode), label="steps"),
        grid=(draw(st.integers(1, 5), label="cols"), draw(st.integers(1, 5), label="rows")),
    )


# ---------------------------------------------------------------------------- tests


def assert_identical(actual: Image.Image, expected: Image.Image) -> None:
    assert (actual.mode, actual.size) == (expected.mode, expected.size)
    got, want = actual.tobytes(), expected.tobytes()
    if got != want:
        differ = [i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y]
        row = len(want) // expected.height
        raise AssertionError(
            f"{len(differ)} of {len(want)} bytes differ; the first in row {differ[0] // row} "
            f"(byte {differ[0] % row} of {row})"
        )
    if expected.mode in ("P", "PA"):
        assert actual.getpalette() == expected.getpalette()
    assert actual.info.get("transparency") == expected.info.get("transparency")


def test_every_drawn_operation_has_a_pillow_reference_here() -> None:
    missing = {op.name for op in drawn_operations()} - set(REFERENCES)
    assert not missing, f"add their ops-reference.md calls to REFERENCES: {sorted(missing)}"
    assert len(drawn_operations()) >= 26  # the built-ins of README's table, at least


def test_the_strategy_draws_pipelines_that_run_and_some_that_are_refused() -> None:
    seen: dict[bool, int] = {True: 0, False: 0}

    @settings(
        max_examples=150,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases())
    def count(case: Case) -> None:
        seen[reference(probe(case.mode), case.steps) is not None] += 1

    count()
    assert seen[True] > seen[False] > 0, seen


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: palette transparency as bytes
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
@example(  # every tile a single pixel, geometry between neighbourhoods, the widest kernels
    case=Case(
        "RGB",
        5,
        3,
        seed=7,
        steps=(
            ("gaussian_blur", {"radius": 6.0}),
            ("rotate", {"angle": 90}),
            ("median", {"size": 5}),
            ("smooth_more", {}),
        ),
        grid=(5, 5),
    )
)
@example(  # a palette with transparency through geometry and a mode change
    case=Case(
        "P",
        300,
        1,
        seed=3,
        levels=3,
        transparency=2,
        steps=(
            ("flip", {}),
            ("rotate", {"angle": 270}),
            ("convert", {"mode": "RGBA"}),
            ("box_blur", {"radius": 2.3}),
        ),
        grid=(5, 5),
    )
)
@example(  # 16-bit grey: a fractional box blur (a far pixel of small weight) on a tall strip
    case=Case("I;16", 2, 300, seed=1, steps=(("box_blur", {"radius": 5.5}), ("flip", {})), grid=(1, 5))
)
def test_any_pipeline_on_any_image_and_grid_equals_pillow_on_the_whole_image(
    client: Client, no_leftovers: None, case: Case
) -> None:
    image = case.image()
    expected = reference(image.copy(), case.steps)
    if expected is None:
        with pytest.raises((UnsupportedMode, InvalidParameter)):
            client.process_image(image, list(case.steps), grid=case.grid)
        assume(False)  # refused as Pillow refuses: nothing to compare
    result = client.process_image(image, list(case.steps), grid=case.grid)
    assert_identical(result, expected)
