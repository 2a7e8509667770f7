"""Pipelines: specs parsed into checked steps, their halo, and how a tile runs through them.

Specs are ``name`` or ``name:key=value,key=value``, or a ``(name, {params})`` pair.  A
pipeline's halo is the sum of its steps' reaches: a tile cut that much wider than its
share comes out of the pipeline with a correct core, which is what makes tiled results
equal whole-image results: the same Pillow calls chained (see ``docs/operations.md``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from PIL import Image

from ..errors import InvalidParameter, TilechordError, UnknownOperation, UnsupportedMode
from .registry import Box, Histogram, Kind, Registry, Size, Step, registry

__all__ = ["OpSpec", "Pipeline", "add_histograms", "parse_pipeline"]

OpSpec: TypeAlias = "str | tuple[str, Mapping[str, Any]] | Step"


def add_histograms(parts: Iterable[Sequence[int]]) -> Histogram:
    """The whole image's histogram from its tiles' (they partition the image)."""
    total: Histogram = []
    for part in parts:
        if not total:
            total = list(part)
        elif len(part) != len(total):
            raise TilechordError(f"histograms of different lengths ({len(part)} and {len(total)})")
        else:
            total = [a + b for a, b in zip(total, part, strict=True)]
    return total


# --------------------------------------------------------------------------- specs


def _parse_spec(text: str) -> tuple[str, dict[str, str]]:
    text = text.strip()
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise UnknownOperation(f"empty operation name in {text!r}")
    values: dict[str, str] = {}
    if sep and rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InvalidParameter(
                    f"{name}: cannot read {item.strip()!r} in {text!r}; write {name}:key=value"
                )
            key = key.strip()
            if key in values:
                raise InvalidParameter(f"{name}: parameter {key!r} given twice in {text!r}")
            values[key] = value.strip()
    return name, values


def _step(spec: OpSpec, reg: Registry) -> Step:
    if isinstance(spec, Step):
        return spec
    if isinstance(spec, str):
        name, texts = _parse_spec(spec)
        return reg.get(name).bind(texts)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
        name, given = spec
        values: Any = {} if given is None else given
        if not isinstance(values, Mapping):
            raise InvalidParameter(f"{name}: parameters must be a mapping, not {values!r}")
        return reg.get(name).bind(values)
    raise InvalidParameter(
        f"an operation is a spec string like 'gaussian_blur:radius=4' or a "
        f"(name, {{params}}) pair, not {spec!r}"
    )


@dataclass(frozen=True)
class Pipeline:
    """Steps applied in order.  Empty is the identity."""

    steps: tuple[Step, ...] = ()

    @property
    def halo(self) -> int:
        """The margin a tile needs: the sum of the steps' reaches."""
        return sum(step.reach for step in self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __str__(self) -> str:
        return " | ".join(step.spec for step in self.steps) or "identity"

    def to_json(self) -> list[list[Any]]:
        return [step.to_json() for step in self.steps]

    @classmethod
    def from_json(cls, data: Iterable[Sequence[Any]], reg: Registry | None = None) -> Pipeline:
        reg = registry if reg is None else reg
        return cls(tuple(reg.get(name).bind(params) for name, params in data))

    @property
    def global_steps(self) -> tuple[int, ...]:
        """Where the global steps are: each one is a stage (measure, reduce) of the job."""
        return tuple(i for i, step in enumerate(self.steps) if step.kind is Kind.GLOBAL)

    def output_size(self, size: Size) -> Size:
        for step in self.steps:
            size = step.map_size(size)
        return size

    def check_mode(self, mode: str) -> str:
        """Dry-run the pipeline on a tiny image of *mode*; return the output mode.

        Pillow knows best which modes each call accepts, so ask it, before any task is
        enqueued, instead of keeping a table that could drift from Pillow's behaviour.
        """
        probe = _probe_image(mode)
        for step in self.steps:
            try:
                out = step.apply(probe)
            except TilechordError:
                raise  # the operation's own, already precise, error
            except (ValueError, OSError, TypeError, NotImplementedError) as exc:
                raise UnsupportedMode(
                    f"{step.spec} cannot work on mode {probe.mode} images ({exc}); "
                    f"convert the image first, e.g. with the step 'convert:mode=RGB'"
                ) from None
            except Exception as exc:
                raise TilechordError(
                    f"{step.spec} failed on a small test image of mode {probe.mode}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(out, Image.Image):
                raise TilechordError(f"operation {step.name} returned {type(out).__name__}, not an image")
            expected = step.map_size(probe.size)
            if out.size != expected:
                raise TilechordError(
                    f"operation {step.name} changed the image size from {probe.size} to {out.size}; "
                    "only geometry operations may do that"
                )
            probe = out
        return probe.mode

    def apply(self, image: Image.Image) -> Image.Image:
        """Run the whole pipeline on one image, as a single process would."""
        for step in self.steps:
            image = step.apply(image)
        return image

    def run_tile(
        self,
        piece: Image.Image,
        cut: Box,
        core: Box,
        size: Size,
        histograms: Mapping[int, Histogram] | None = None,
        upto: int | None = None,
    ) -> tuple[Image.Image, Box]:
        """Edit one tile: *piece* is the image's *cut* box (core plus halo) of an image of *size*.

        Returns the edited core and the box it occupies in the output image.  Geometry
        steps move the tile, so both boxes are carried through them; every other step
        keeps the size and spoils at most its reach of the halo, which the final crop drops.
        Global steps use the whole image's histogram from *histograms* (by step index).
        With *upto*, only the steps before that index run (to measure a global step's input).
        """
        for number, step in enumerate(self.steps[:upto]):
            if step.kind is Kind.GLOBAL:
                if histograms is None or number not in histograms:
                    raise TilechordError(f"step {number + 1} ({step.spec}) needs the image's histogram")
                out = step.apply_measured(piece, histograms[number])
            else:
                out = step.apply(piece)
            if step.kind is Kind.GEOMETRY:
                cut, core = step.map_box(cut, size), step.map_box(core, size)
                size = step.map_size(size)
            expected = (cut[2] - cut[0], cut[3] - cut[1])
            if out.size != expected:
                raise TilechordError(
                    f"operation {step.name} turned a {piece.size[0]}x{piece.size[1]} tile into "
                    f"{out.size[0]}x{out.size[1]}; only geometry operations may change the size"
                )
            piece = out
        left, top = core[0] - cut[0], core[1] - cut[1]
        return piece.crop((left, top, left + core[2] - core[0], top + core[3] - core[1])), core


@functools.cache
def _probe_base() -> Image.Image:
    """An 8x6 gradient, made once: Pillow's 256x256 gradient and its resize cost ~0.15 ms a job."""
    return Image.linear_gradient("L").resize((8, 6))


def _probe_image(mode: str) -> Image.Image:
    """A small, non-uniform image of *mode* (with a palette for P and PA)."""
    base = _probe_base()  # never handed out itself: convert and new make new images
    if mode in ("P", "PA"):
        return base.convert("RGB").convert(mode)
    try:
        return base.convert(mode)
    except ValueError:
        return Image.new(mode, (8, 6))


def parse_pipeline(ops: Iterable[OpSpec] | OpSpec | Pipeline | None, reg: Registry | None = None) -> Pipeline:
    """Turn user input (specs, pairs, or None for the identity) into a checked pipeline."""
    if ops is None:
        return Pipeline()
    if isinstance(ops, Pipeline):
        return ops
    reg = registry if reg is None else reg
    if isinstance(ops, (str, Step)) or (
        isinstance(ops, tuple) and len(ops) == 2 and isinstance(ops[0], str) and isinstance(ops[1], Mapping)
    ):
        ops = [ops]  # a single spec
    return Pipeline(tuple(_step(spec, reg) for spec in ops))
