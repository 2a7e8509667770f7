"""The operations table: what ``tilechord ops`` lists and what ``docs/operations.md`` says.

Both are made from the registry itself, so neither can drift from the code: the rows and
the Markdown table cover every registered operation (custom ones too), the document only
the built-ins.  Regenerate the document with::

    python -m tilechord.ops.table > docs/operations.md
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from . import builtin, global_ops
from .registry import Kind, Operation, format_value, registry

__all__ = ["BUILTIN_MODULES", "builtins", "document", "markdown_table", "rows"]

Row = tuple[str, str, str, str, str]

#: The modules whose operations are tilechord's own (the document lists only these).
BUILTIN_MODULES = (builtin.__name__, global_ops.__name__)


def _reach(op: Operation) -> str:
    """The reach as ``tilechord ops`` shows it: at the defaults, or "varies" without them."""
    if op.kind is not Kind.NEIGHBOURHOOD:
        return "0"
    if any(p.required for p in op.params):
        return "varies"
    return f"{op.bind({}).reach} px" + (" at defaults" if op.params else "")


def rows(ops: Iterable[Operation] | None = None) -> list[Row]:
    """(name, parameters, kind, reach, description) of every registered operation."""
    return [
        (op.name, op.describe() or "-", op.kind.value, _reach(op), op.doc)
        for op in (registry if ops is None else ops)
    ]


def markdown_table(ops: Iterable[Operation] | None = None) -> str:
    """The lines of ``tilechord ops --markdown`` (as in README.md), without a final newline."""
    lines = ["| operation | parameters | kind | reach | what it does |", "| --- | --- | --- | --- | --- |"]
    for name, params, kind, reach, doc in rows(ops):
        lines.append(f"| `{name}` | {params} | {kind} | {reach} | {doc} |")
    return "\n".join(lines)


def builtins() -> list[Operation]:
    """tilechord's own operations, by kind then name: not the plugins' (TILECHORD_PLUGINS)."""
    kinds = list(Kind)
    own = (op for op in registry if op.func.__module__ in BUILTIN_MODULES)
    return sorted(own, key=lambda op: (kinds.index(op.kind), op.name))


# ------------------------------------------------------------------------ document

_INTRO = """\
# Operations

Each built-in operation is defined by one Pillow call on the whole image `im`: tilechord's
result for any grid equals that call's result pixel for pixel (same mode, same size, same
bytes), for every image mode the call accepts.

A step is written `name` or `name:key=value,key=value,...`, e.g. `gaussian_blur:radius=4`.
Parameters left out take their defaults, which are Pillow's. A pipeline is a list of steps
applied in order; its reference is the same calls chained on the whole image. Its halo, the
margin each tile is cut with beyond its share, is the sum of its steps' reaches.

A mode the Pillow call refuses is refused too, before any task is enqueued: the pipeline is
first run on a tiny image of the input's mode, and the error says to convert first (e.g.
with the step `convert:mode=RGB`). Where tilechord refuses more than Pillow, the table says
what, and why.

## Kinds

- **pixel**: each output pixel depends on the same input pixel only; the reach is 0.
- **neighbourhood**: each output pixel depends on the input pixels within a fixed reach; a
  tile needs a halo at least that wide. Reaches that depend on the parameters are derived
  from Pillow's C code in `tilechord.ops.reach`; the table gives them at the defaults.
- **geometry**: moves pixels; each tile is transformed alone, and the merge places it where
  it now belongs.
- **global**: needs a statistic of the whole image (its mean or histogram): each tile
  measures its histogram, the job adds them up, and each tile is then edited with the sum.

## Built-in operations

"""

_NOTES = """
## Notes

- `convert` is tilechord's own: it equals `im.convert(mode, dither=Image.Dither.NONE)`.
  Pillow's default, `im.convert(mode)`, dithers (Floyd-Steinberg) to 1 and P, carrying each
  pixel's error into the pixels after it, which no tile can reproduce.
- The kernels (`sharpen`, `smooth`, ..., `contour`) and rank filters (`median`, `min`,
  `max`) refuse PA images (palette plus alpha). Pillow refuses P images itself, but filters
  PA ones band by band, the palette indices as if they were grey levels, and returns an
  image without its palette, which saves and converts as black. Convert first:
  `convert:mode=RGBA` works pixel by pixel, so `convert:mode=RGBA` then `sharpen` tiles like
  any RGBA pipeline and equals `im.convert("RGBA").filter(ImageFilter.SHARPEN)`.
- `tilechord ops` lists these and any custom operations (from `TILECHORD_PLUGINS`), with
  their parameters and reaches.
- This file is generated: `python -m tilechord.ops.table > docs/operations.md`.
"""

_COLUMNS = ("spec (with defaults)", "Pillow reference", "kind", "reach", "parameters", "what it does")
_HEADER = (
    "| " + " | ".join([*_COLUMNS, "tilechord refuses"]) + " |",
    "|" + " --- |" * (len(_COLUMNS) + 1),
)


def _default_spec(op: Operation) -> str:
    """``name:key=default,...``: the spec that spells out every default."""
    values = [
        f"{p.name}=" + (f"<{p.type.__name__}>" if p.required else format_value(p.default)) for p in op.params
    ]
    return op.name + (":" + ",".join(values) if values else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "-"


def _document_row(op: Operation) -> str:
    cells = (
        f"`{_default_spec(op)}`",
        f"`{op.pillow}`" if op.pillow else "-",
        op.kind.value,
        _reach(op),
        op.describe(),
        op.doc,
        op.refuses,
    )
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def document() -> str:
    """The full text of ``docs/operations.md``, from the built-in operations only."""
    table = "\n".join([*_HEADER, *(_document_row(op) for op in builtins())])
    return _INTRO + table + "\n" + _NOTES


if __name__ == "__main__":
    sys.stdout.write(document())
