"""The operations registry: what an edit can do, with typed parameters and a reach.

An operation is a function ``(image, **params) -> image`` registered under a name with
:func:`operation`.  Its parameters are read from the function's signature (type hints and
defaults) and may be given bounds; its *reach* (how far, in pixels, an output pixel can
see) is a number or a function of the parameters.  Each built-in one also names the
exact Pillow call it equals on the whole image; ``docs/operations.md`` lists them all.
"""

from __future__ import annotations

import difflib
import enum
import inspect
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias

from PIL import Image

from ..errors import InvalidParameter, TilechordError, UnknownOperation

__all__ = [
    "Kind",
    "Param",
    "Operation",
    "Step",
    "Registry",
    "Box",
    "Histogram",
    "operation",
    "registry",
]

Box: TypeAlias = tuple[int, int, int, int]
Size: TypeAlias = tuple[int, int]
ParamValue: TypeAlias = "int | float | bool | str"
OpFunc: TypeAlias = Callable[..., Image.Image]
ReachFn: TypeAlias = Callable[[Mapping[str, Any]], int]
BoxFn: TypeAlias = Callable[[Box, Size, Mapping[str, Any]], Box]
SizeFn: TypeAlias = Callable[[Size, Mapping[str, Any]], Size]
Histogram: TypeAlias = list[int]
MeasureFn: TypeAlias = Callable[[Image.Image, Mapping[str, Any]], Histogram]
ApplyFn: TypeAlias = Callable[[Image.Image, Histogram, Mapping[str, Any]], Image.Image]


class Kind(enum.StrEnum):
    """How an operation's output pixels depend on its input (see docs/operations.md)."""

    PIXEL = "pixel"  # each output pixel from the same input pixel
    NEIGHBOURHOOD = "neighbourhood"  # from input pixels within the reach
    GEOMETRY = "geometry"  # moves pixels: each tile is transformed and put where it belongs
    GLOBAL = "global"  # needs a statistic of the whole image


# ----------------------------------------------------------------------- parameters


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
            lo = "" if self.minimum is None else format_value(self.minimum)
            hi = "" if self.maximum is None else format_value(self.maximum)
            text += f" [{lo}..{hi}]"
        if not self.required:
            text += f" = {format_value(self.default)}"
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
                    f"{where} must be at least {format_value(self.minimum)}, not {format_value(converted)}"
                )
            if self.maximum is not None and converted > self.maximum:
                raise InvalidParameter(
                    f"{where} must be at most {format_value(self.maximum)}, not {format_value(converted)}"
                )
        return converted


def format_value(value: Any) -> str:
    """A parameter value as a spec writes it: ``2`` for the float 2.0."""
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


# ----------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    """A registered operation.  Use :func:`operation` to make one."""

    name: str
    func: OpFunc
    params: tuple[Param, ...]
    kind: Kind
    reach: ReachFn
    doc: str = ""
    # The exact Pillow call it equals on the whole image ``im``, e.g.
    # ``im.filter(ImageFilter.GaussianBlur(radius))``; custom operations may leave it empty.
    pillow: str = ""
    # What tilechord refuses (or does differently) where that Pillow call would not.
    refuses: str = ""
    # Geometry operations say where a box of the image goes, and what size the image becomes.
    map_box: BoxFn | None = None
    map_size: SizeFn | None = None
    # Global operations measure each tile (a histogram; the tiles' add up to the image's)
    # and apply themselves to a tile with the whole image's histogram.
    measure: MeasureFn | None = None
    apply_measured: ApplyFn | None = None

    def __post_init__(self) -> None:
        # A tile of these kinds cannot be run without them, so refuse at registration.
        if self.kind is Kind.GEOMETRY and (self.map_box is None or self.map_size is None):
            raise TypeError(f"geometry operation {self.name!r} needs map_box and map_size")
        if self.kind is Kind.GLOBAL and (self.measure is None or self.apply_measured is None):
            raise TypeError(f"global operation {self.name!r} needs measure and apply_measured")

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
            f"{p.name}={format_value(self.params[p.name])}"
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


# ----------------------------------------------------------------------- decorator


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


@dataclass(frozen=True)
class _FixedReach:
    """A reach that does not depend on the parameters (and says so in its repr)."""

    pixels: int

    def __call__(self, _params: Mapping[str, Any]) -> int:
        return self.pixels


def _summary(func: Callable[..., Any]) -> str:
    """The docstring's first paragraph on one line: what ``tilechord ops`` shows."""
    return (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")


def operation(
    name: str,
    *,
    kind: Kind | str = Kind.NEIGHBOURHOOD,
    reach: int | ReachFn = 0,
    pillow: str = "",
    refuses: str = "",
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    choices: Mapping[str, Sequence[Any]] | None = None,
    map_box: BoxFn | None = None,
    map_size: SizeFn | None = None,
    measure: MeasureFn | None = None,
    apply_measured: ApplyFn | None = None,
    target: Registry | None = None,
) -> Callable[[OpFunc], OpFunc]:
    """Register ``func(image, **params) -> image`` as the operation *name*.

    *reach* is how many pixels away an output pixel may look, as a number or a function
    of the parameters; it must never be too small, or tiled results show seams.  The
    function itself is returned unchanged, so it stays callable on a whole image.
    *pillow* is the Pillow call it equals on the whole image ``im`` (for the documentation),
    and *refuses* what tilechord refuses where that call would not.

    A geometry operation also gives *map_box* and *map_size*; a global one gives
    *measure* (a tile's histogram: the tiles' histograms add up to the image's) and
    *apply_measured* (the operation on a tile, given the whole image's histogram).

    Example::

        @tilechord.operation("soften", reach=lambda p: p["size"] // 2, bounds={"size": (3, 9)})
        def soften(image: Image.Image, size: int = 3) -> Image.Image:
            return image.filter(ImageFilter.ModeFilter(size))
    """
    kind = Kind(kind)
    reach_fn: ReachFn = reach if callable(reach) else _FixedReach(int(reach))

    def decorate(func: OpFunc) -> OpFunc:
        op = Operation(
            name=name,
            func=func,
            params=_params_from_signature(func, bounds or {}, choices or {}),
            kind=kind,
            reach=reach_fn,
            doc=_summary(func),
            pillow=pillow,
            refuses=refuses,
            map_box=map_box,
            map_size=map_size,
            measure=measure,
            apply_measured=apply_measured,
        )
        (registry if target is None else target).add(op)
        return func

    return decorate
