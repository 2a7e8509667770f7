"""``tilechord ops``: the operations table, for a terminal or (``--markdown``) for README.md."""

from __future__ import annotations

import click

from ..config import Settings
from ..ops import Kind, registry
from ..worker.app import load_plugins

__all__ = ["list_ops"]


def ops_rows() -> list[tuple[str, str, str, str, str]]:
    """(name, parameters, kind, reach, description) of every registered operation."""
    rows = []
    for op in registry:
        step = op.bind({}) if all(not p.required for p in op.params) else None
        if op.kind is not Kind.NEIGHBOURHOOD:
            reach = "0"
        elif step is None:
            reach = "varies"
        else:
            reach = f"{step.reach} px" + (" at defaults" if op.params else "")
        rows.append((op.name, op.describe() or "-", op.kind.value, reach, op.doc))
    return rows


def _markdown_table(rows: list[tuple[str, str, str, str, str]]) -> list[str]:
    lines = ["| operation | parameters | kind | reach | what it does |", "| --- | --- | --- | --- | --- |"]
    for name, params, kind, reach, doc in rows:
        lines.append(f"| `{name}` | {params} | {kind} | {reach} | {doc} |")
    return lines


def _text_table(rows: list[tuple[str, str, str, str, str]]) -> list[str]:
    """Name, kind and reach in aligned columns, then the parameters; each description below."""
    headers = ("operation", "kind", "reach", "parameters")
    table = [(r[0], r[2], r[3], r[1]) for r in rows]
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(3)]
    lines = []
    for row, doc in zip([headers, *table], ["", *(r[4] for r in rows)], strict=True):
        cells = [c.ljust(w) for c, w in zip(row[:3], widths, strict=False)]
        lines.append("  ".join([*cells, row[3]]).rstrip())
        if doc:
            lines.append(f"    {doc}")
    return lines


@click.command("ops")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (as in README.md).")
def list_ops(markdown: bool) -> None:
    """List every operation with its parameters, kind and reach (halo).

    Includes custom operations from the modules named in TILECHORD_PLUGINS.
    """
    load_plugins(Settings.from_env().plugins)
    rows = ops_rows()
    for line in _markdown_table(rows) if markdown else _text_table(rows):
        click.echo(line)
