"""``tilechord ops``: the operations table, for a terminal or (``--markdown``) for README.md."""

from __future__ import annotations

import click

from ..config import Settings
from ..ops.table import markdown_table, rows
from ..worker.app import load_plugins

__all__ = ["list_ops"]


def _text_table(ops: list[tuple[str, str, str, str, str]]) -> list[str]:
    """Name, kind and reach in aligned columns, then the parameters; each description below."""
    headers = ("operation", "kind", "reach", "parameters")
    table = [(r[0], r[2], r[3], r[1]) for r in ops]
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(3)]
    lines = []
    for row, doc in zip([headers, *table], ["", *(r[4] for r in ops)], strict=True):
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
    if markdown:
        click.echo(markdown_table())
        return
    for line in _text_table(rows()):
        click.echo(line)
