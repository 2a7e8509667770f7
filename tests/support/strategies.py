"""Hypothesis strategies: an image (mode, size, content), a pipeline of registered operations, a grid.

Shared by the property test through the real workers (``tests/test_property.py``) and by
the unit tests of the strategy itself (``tests/unit/test_strategies.py``).  Pipelines are
drawn from tilechord's own operations of every kind, with parameters within their bounds;
whether Pillow accepts a step on the mode it meets is told by the references of
``reference.py``, never by tilechord.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st
from images import random_image
from PIL import Image
from reference import reference_or_none

from tilechord.ops import Kind, Operation, Param, registry

#: The kinds of operation drawn: all of them, global ones (stats/reduce stages) included.
KINDS = frozenset({Kind.PIXEL, Kind.NEIGHBOURHOOD, Kind.GEOMETRY, Kind.GLOBAL})

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")

#: Upper limits on drawn parameter values where large ones only cost time (the
#: operations accept more: their bounds are checked in tests/unit/test_filters.py).
CAPS: dict[str, float] = {"radius": 6.0, "size": 5}

Steps = tuple[tuple[str, dict[str, Any]], ...]


@functools.cache
def drawn_operations() -> tuple[Operation, ...]:
    """tilechord's own operations of the drawn kinds (not the test plugin's)."""
    return tuple(op for op in registry if op.kind in KINDS and op.func.__module__.startswith("tilechord."))


@functools.cache
def probe(mode: str) -> Image.Image:
    return random_image(mode, 7, 6, seed=1)


def accepts(name: str, params: Mapping[str, Any], mode: str) -> str | None:
    """The mode Pillow gives for one step on a small image of *mode*, or None if refused."""
    out = reference_or_none(probe(mode), [(name, dict(params))])
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
