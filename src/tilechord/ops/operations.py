"""The operations registry: what an edit can do, with typed parameters and a reach.

An operation is a function ``(image, **params) -> image`` registered under a name with
:func:`operation`.  Its parameters are read from the function's signature (type hints and
defaults) and may be given bounds; its *reach* (how far, in pixels, an output pixel can
see) is a number or a function of the parameters.  A pipeline's halo is the sum of its
steps' reaches: a tile cut that much wider than its share comes out of the pipeline with
a correct core, which is what makes tiled results equal whole-image results.

Specs are ``name`` or ``name:key=value,key=value``, or a ``(name, {params})`` pair.
"""

from __future__ import annotations

import difflib
import enum
import functools
import inspect
import math
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from PIL import Image

from ..errors import InvalidParameter, TilechordError, UnknownOperation, UnsupportedMode

__all__ = [
    "Kind",
    "Param",
    "Operation",
    "Step",
    "Pipeline",
    "Box",
    "operation",
    "registry",
    "parse_pipeline",
    "OpSpec",
    "Histogram",
    "add_histograms",
]

Box: TypeAlias = tuple[int, int, int, int]
Size: TypeAlias = tuple[int, int]
OpSpec: TypeAlias = "str | tuple[str, Mapping[str, Any]] | Step"
ParamValue: TypeAlias = "int | float | bool | str"


class Kind(enum.StrEnum):
    """How an operation's output pixels depend on its input (see ops-reference)."""

    PIXEL = "pixel"  # each output pixel from the same input pixel
    NEIGHBOURHOOD = "neighbourhood"  # from input pixels within the reach
    GEOMETRY = "geometry"  # moves pixels: each tile is transformed and put where it belongs
    GLOBAL = "global"  # needs a statistic of the whole image


@dataclass(frozen=True)
class Param:
    """One parameter of an operation: its type, default and (optional) bounds."""

    name: str
    type: type
    default: Any = inspect.Parameter.empty
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def describe(self) -> str:
        text = f"{self.name}: {self.type.__name__}"
        if self.choices is not None and len(self.choices) > 8:
            text += " (one of " + ", ".join(str(c) for c in self.choices[:6]) + ", ...)"
        elif self.choices is not None:
            text += " in {" + ", ".join(str(c) for c in self.choices) + "}"
        elif self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else _fmt(self.minimum)
            hi = "" if self.maximum is None else _fmt(self.maximum)
            text += f" [{lo}..{hi}]"
        if not self.required:
            text += f" = {_fmt(self.default)}"
        return text

    def coerce(self, op: str, value: Any) -> ParamValue:
        """Turn a spec string or a Python value into this parameter's type, checked."""
        where = f"{op}:{self.name}"
        try:
            converted = _convert(self.type, value)
        except (TypeError, ValueError):
            raise InvalidParameter(
                f"{where} must be {_article(self.type)} {self.type.__name__}, not {value!r}"
            ) from None
        if self.choices is not None and converted not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices)
            raise InvalidParameter(f"{where} must be one of {allowed}, not {value!r}")
        if isinstance(converted, (int, float)) and not isinstance(converted, bool):
            if isinstance(converted, float) and not math.isfinite(converted):
                raise InvalidParameter(f"{where} must be a finite number, not {value!r}")
            if self.minimum is not None and converted < self.minimum:
                raise InvalidParameter(
                    f"{where} must be at least {_fmt(self.minimum)}, not {_fmt(converted)}"
                )
            if self.maximum is not None and converted > self.maximum:
                raise InvalidParameter(f"{where} must be at most {_fmt(self.maximum)}, not {_fmt(converted)}")
        return converted


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def _article(tp: type) -> str:
    return "an" if tp.__name__[0] in "aeiou" else "a"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(tp: type, value: Any) -> ParamValue:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(value)
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    raise TypeError(f"unsupported parameter type {tp!r}")


ReachFn: TypeAlias = Callable[[Mapping[str, Any]], int]
BoxFn: TypeAlias = Callable[[Box, Size, Mapping[str, Any]], Box]
SizeFn: TypeAlias = Callable[[Size, Mapping[str, Any]], Size]
Histogram: TypeAlias = list[int]
MeasureFn: TypeAlias = Callable[[Image.Image, Mapping[str, Any]], Histogram]
ApplyFn: TypeAlias = Callable[[Image.Image, Histogram, Mapping[str, Any]], Image.Image]


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


@dataclass(frozen=True)
class Operation:
    """A registered operation.  Use :func:`operation` to make one."""

    name: str
    func: Callable[..., Image.Image]
    params: tuple[Param, ...]
    kind: Kind
    reach: ReachFn
    doc: str = ""
    # Geometry operations say where a box of the image goes, and what size the image becomes.
    map_box: BoxFn | None = None
    map_size: SizeFn | None = None
    # Global operations measure each tile (a histogram; the tiles' add up to the image's)
    # and apply themselves to a tile with the whole image's histogram.
    measure: MeasureFn | None = None
    apply_measured: ApplyFn | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "no parameters"
        raise InvalidParameter(f"{self.name} has no parameter {name!r} (it takes {known})")

    def bind(self, values: Mapping[str, Any] | None = None) -> Step:
        """Check *values* against the parameters and return a runnable :class:`Step`."""
        values = dict(values or {})
        bound: dict[str, Any] = {}
        for key, raw in values.items():
            bound[key] = self.param(key).coerce(self.name, raw)
        for p in self.params:
            if p.name not in bound:
                if p.required:
                    raise InvalidParameter(
                        f"{self.name} needs a value for {p.name!r}: "
                        f"write {self.name}:{p.name}=<{p.type.__name__}>"
                    )
                bound[p.name] = p.default
        return Step(self, MappingProxyType(bound))

    def describe(self) -> str:
        return ", ".join(p.describe() for p in self.params)


@dataclass(frozen=True)
class Step:
    """An operation bound to checked parameter values: one stage of a pipeline."""

    op: Operation
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.op.name

    @property
    def kind(self) -> Kind:
        return self.op.kind

    @property
    def reach(self) -> int:
        if self.op.kind is not Kind.NEIGHBOURHOOD:
            return 0
        return max(0, int(self.op.reach(self.params)))

    @property
    def spec(self) -> str:
        """The canonical spec string: parameters that differ from their defaults."""
        changed = [
            f"{p.name}={_fmt(self.params[p.name])}"
            for p in self.op.params
            if p.required or self.params[p.name] != p.default
        ]
        return self.name + (":" + ",".join(changed) if changed else "")

    def apply(self, image: Image.Image) -> Image.Image:
        return self.op.func(image, **self.params)

    def map_box(self, box: Box, size: Size) -> Box:
        return box if self.op.map_box is None else self.op.map_box(box, size, self.params)

    def map_size(self, size: Size) -> Size:
        return size if self.op.map_size is None else self.op.map_size(size, self.params)

    def measure(self, image: Image.Image) -> Histogram:
        """This tile's share of the statistic a global step needs."""
        assert self.op.measure is not None, f"{self.name} is not a global operation"
        return self.op.measure(image, self.params)

    def apply_measured(self, image: Image.Image, histogram: Histogram) -> Image.Image:
        """Apply a global step to a tile as if to the whole image whose *histogram* it is."""
        assert self.op.apply_measured is not None, f"{self.name} is not a global operation"
        return self.op.apply_measured(image, histogram, self.params)

    def to_json(self) -> list[Any]:
        return [self.name, dict(self.params)]

    def __str__(self) -> str:
        return self.spec


class Registry:
    """Name -> :class:`Operation`.  Registering a name twice is an error, not an override."""

    def __init__(self) -> None:
        self._ops: dict[str, Operation] = {}

    def add(self, op: Operation) -> None:
        existing = self._ops.get(op.name)
        if existing is not None:
            where = f"{existing.func.__module__}.{existing.func.__qualname__}"
            raise TilechordError(f"operation {op.name!r} is already registered (by {where})")
        self._ops[op.name] = op

    def get(self, name: str) -> Operation:
        try:
            return self._ops[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, self._ops, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownOperation(f"unknown operation {name!r}{hint} (`tilechord ops` lists them all)") from None

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __iter__(self) -> Iterator[Operation]:
        return iter(sorted(self._ops.values(), key=lambda o: o.name))

    def __len__(self) -> int:
        return len(self._ops)


registry = Registry()


def _params_from_signature(
    func: Callable[..., Any],
    bounds: Mapping[str, tuple[float | None, float | None]],
    choices: Mapping[str, Sequence[Any]],
) -> tuple[Param, ...]:
    hints = typing.get_type_hints(func)
    sig = inspect.signature(func)
    names = list(sig.parameters)
    if not names:
        raise TypeError(f"operation {func.__qualname__} must take the image as first argument")
    params = []
    for pname in names[1:]:
        sp = sig.parameters[pname]
        if sp.kind in (sp.VAR_POSITIONAL, sp.VAR_KEYWORD):
            raise TypeError(f"operation {func.__qualname__}: *args/**kwargs are not parameters")
        tp = hints.get(pname, type(sp.default) if sp.default is not sp.empty else None)
        if tp not in (int, float, bool, str):
            raise TypeError(
                f"operation {func.__qualname__}: parameter {pname!r} needs a type hint "
                "of int, float, bool or str"
            )
        lo, hi = bounds.get(pname, (None, None))
        ch = choices.get(pname)
        params.append(Param(pname, tp, sp.default, lo, hi, tuple(ch) if ch is not None else None))
    unknown = (set(bounds) | set(choices)) - {p.name for p in params}
    if unknown:
        raise TypeError(f"operation {func.__qualname__}: bounds for unknown {sorted(unknown)}")
    return tuple(params)


def operation(
    name: str,
    *,
    kind: Kind | str = Kind.NEIGHBOURHOOD,
    reach: int | ReachFn = 0,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    map_box: BoxFn | None = None,
    map_size: SizeFn | None = None,
    measure: MeasureFn | None = None,
    apply_measured: ApplyFn | None = None,
    target: Registry | None = None,
) -> Callable[[Callable[..., Image.Image]], Callable[..., Image.Image]]:
    """Register ``func(image, **params) -> image`` as the operation *name*.

    *reach* is how many pixels away an output pixel may look, as a number or a function
    of the parameters; it must never be too small, or tiled results show seams.  The
    function itself is returned unchanged, so it stays callable on a whole image.

    A geometry operation also gives *map_box* and *map_size*; a global one gives
    *measure* (a tile's histogram: the tiles' histograms add up to the image's) and
    *apply_measured* (the operation on a tile, given the whole image's histogram).

    Example::

        @tilechord.operation("soften", reach=lambda p: p["size"] // 2, bounds={"size": (3, 9)})
        def soften(image: Image.Image, size: int = 3) -> Image.Image:
            return image.filter(ImageFilter.ModeFilter(size))
    """
    kind = Kind(kind)
    reach_fn: ReachFn
    if isinstance(reach, int):
        fixed = int(reach)

        def reach_fn(_params: Mapping[str, Any]) -> int:
            return fixed
    else:
        reach_fn = reach
    if kind is Kind.GEOMETRY and (map_box is None or map_size is None):
        raise TypeError(f"geometry operation {name!r} needs map_box and map_size")
    if kind is Kind.GLOBAL and (measure is None or apply_measured is None):
        raise TypeError(f"global operation {name!r} needs measure and apply_measured")

    def decorate(func: Callable[..., Image.Image]) -> Callable[..., Image.Image]:
        params = _params_from_signature(func, bounds or {}, choices or {})
        doc = inspect.getdoc(func) or ""
        op = Operation(
            name=name,
            func=func,
            params=params,
            kind=kind,
            reach=reach_fn,
            doc=doc.split("\n\n")[0].replace("\n", " "),
            map_box=map_box,
            map_size=map_size,
            measure=measure,
            apply_measured=apply_measured,
        )
        (registry if target is None else target).add(op)
        return func

    return decorate


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
