"""What the command line prints: the one-line error, and a batch's progress and summary.

A batch shows nothing (``--quiet``), a plain line per image (output is not a terminal,
so logs and pipes get text that greps well), or a rich progress bar on stderr.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from ..client import MapProgress, MapResult

__all__ = ["Report", "error_line", "fail", "shown"]


def error_line(message: str) -> str:
    """The one line every error is: scripts match its prefix, people read the rest."""
    return f"tilechord: error: {message}"


def fail(message: str, code: int = 1) -> NoReturn:
    """Print *message* as the error line on stderr and exit with *code*."""
    click.echo(error_line(message), err=True)
    sys.exit(code)


def shown(path: object) -> str:
    """*path* for a terminal: control characters in a name are escaped, not obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def _progress_bar() -> Any:
    """A rich bar on stderr: stdout stays free for what a caller might capture."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]images"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tiles {task.fields[tiles]}"),
        TextColumn("{task.fields[rate]} images/s"),
        TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


class Report:
    """How a batch shows its progress: nothing (``--quiet``), plain lines, or a rich bar."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.started = time.monotonic()
        self.ok = self.failed = 0
        self.tiles = 0
        self.width = len(str(total))
        self._bar: Any = None
        self._task: Any = None
        if not quiet and sys.stdout.isatty() and sys.stderr.isatty():
            self._bar = _progress_bar()
            self._task = self._bar.add_task("batch", total=total, tiles="0/0", rate="0.0", failed="")

    def __enter__(self) -> Report:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def _count(self) -> str:
        return f"[{self.ok + self.failed:>{self.width}}/{self.total}]"

    def progress(self, state: MapProgress) -> None:
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=state.done,
                tiles=f"{state.tiles_done}/{state.tiles_total}",
                rate=f"{self._rate():.1f}",
                failed=f"[red]{state.failed} failed" if state.failed else "",
            )

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        elif not self.quiet:
            click.echo(text)

    def done(self, source: Path, result: MapResult, target: Path) -> None:
        self.ok += 1
        self.tiles += result.tiles
        if self._bar is None:
            self._line(
                f"{self._count()} ok     {shown(source)} -> {shown(target)} "
                f"({result.tiles} tiles, {result.seconds:.2f} s, {self._rate():.1f} images/s)"
            )

    def error(self, source: object, message: str) -> None:
        """A failed image: a progress line on stdout, and the error line on stderr even if quiet."""
        self.failed += 1
        if self._bar is None and not self.quiet:
            click.echo(f"{self._count()} failed {shown(source)}: {message}")
        text = error_line(f"{shown(source)}: {message}")
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)

    def summary(self, directory: Path) -> None:
        elapsed = time.monotonic() - self.started
        self._line(
            f"{self.ok} of {self.total} images written to {directory}, {self.failed} failed; "
            f"{self.tiles} tiles in {elapsed:.1f} s ({self._rate():.1f} images/s)"
        )

    def fail_if_any(self) -> None:
        """Exit 1 if an image failed; a quiet run says how many, having printed no summary."""
        if self.failed:
            if self.quiet:
                fail(f"{self.failed} of {self.total} images failed")
            sys.exit(1)
