"""What the command line prints: the one-line error, a batch's progress and summary, and
a single image's progress.

A batch shows nothing (``--quiet``), a plain line per image (output is not a terminal,
so logs and pipes get text that greps well), or a rich progress bar on stderr.  A single
image shows a bar of tiles and one closing line on a terminal, and nothing otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from ..client import MapProgress, MapResult

__all__ = ["OneReport", "Report", "count", "error_line", "fail", "size_text", "shown"]


def count(n: int, noun: str) -> str:
    """``1 tile``, ``2 tiles``: nothing the command line prints says "1 tiles"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def size_text(size: int) -> str:
    """A file size as people read it: ``812 bytes``, ``35.2 kB``, ``1.2 MB`` (powers of 1000)."""
    if size < 1000:
        return count(size, "byte")
    value = size / 1000
    for unit in ("kB", "MB"):
        if round(value, 1) < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


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


def _progress_bar(batch: bool = True) -> Any:
    """A rich bar on stderr: stdout stays free for what a caller might capture.

    A batch's counts images (its summary follows the bar, which stays); a single image's
    counts tiles, and gives way to the closing line (transient).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    if not batch:
        return Progress(
            SpinnerColumn(),
            TextColumn("[bold]tiles"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
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


class OneReport:
    """A single image's run: a bar of tiles on stderr, then one line, on a terminal only.

    Off a terminal (a pipe, a log, cron) and with ``--quiet`` it prints nothing, as a
    single image always did: scripts see only errors.
    """

    def __init__(self, quiet: bool) -> None:
        self.started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        if not quiet and sys.stderr.isatty():
            self._bar = _progress_bar(batch=False)
            self._task = self._bar.add_task("tiles", total=None)

    def __enter__(self) -> OneReport:
        self.started = time.monotonic()
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def progress(self, done: int, total: int) -> None:
        """``Job.get``'s ``on_progress``: tiles edited of tiles in all."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    @property
    def on_progress(self) -> Callable[[int, int], None] | None:
        """What to give ``Job.get``: nothing off a terminal, where counting tiles costs round trips."""
        return self.progress if self._bar is not None else None

    def written(self, target: Path, size: int, tiles: int) -> None:
        """The closing line: what was written, its size, the tiles and the time."""
        if self._bar is None:
            return
        elapsed = time.monotonic() - self.started
        self._bar.stop()  # the bar goes (transient); the line takes its place
        self._bar.console.print(
            f"wrote {shown(target)} ({size_text(size)}, {count(tiles, 'tile')}, {elapsed:.1f} s)",
            markup=False,
            highlight=False,
        )


class Report:
    """How a batch shows its progress: nothing (``--quiet``), plain lines, or a rich bar.

    The bar's image count and failures are this report's own (an image counts once its
    file is written or its failure reported, so a failed write counts as failed), and
    its last update is the summary's numbers: the summary prints below the finished bar
    and agrees with it.
    """

    def __init__(self, total: int, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.started = time.monotonic()
        self.ok = self.failed = 0
        self.tiles = 0
        self.width = len(str(total))
        self._tiles_shown = "0/0"
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

    def _rate(self, now: float | None = None) -> float:
        elapsed = (time.monotonic() if now is None else now) - self.started
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

    def _count(self) -> str:
        return f"[{self.ok + self.failed:>{self.width}}/{self.total}]"

    def _update(self, rate: float | None = None) -> None:
        self._bar.update(
            self._task,
            completed=self.ok + self.failed,
            tiles=self._tiles_shown,
            rate=f"{self._rate() if rate is None else rate:.1f}",
            failed=f"[red]{self.failed} failed" if self.failed else "",
        )

    def progress(self, state: MapProgress) -> None:
        self._tiles_shown = f"{state.tiles_done}/{state.tiles_total}"
        if self._bar is not None:
            self._update()

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
                f"({count(result.tiles, 'tile')}, {result.seconds:.2f} s, {self._rate():.1f} images/s)"
            )
        else:
            self._update()

    def error(self, source: object, message: str) -> None:
        """A failed image: a progress line on stdout, and the error line on stderr even if quiet."""
        self.failed += 1
        if self._bar is None and not self.quiet:
            click.echo(f"{self._count()} failed {shown(source)}: {message}")
        text = error_line(f"{shown(source)}: {message}")
        if self._bar is not None:
            self._update()
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)

    def summary(self, directory: Path) -> None:
        """The closing line; on a terminal, after the bar's last update, with its numbers."""
        now = time.monotonic()
        elapsed, rate = now - self.started, self._rate(now)
        if self._bar is not None:
            self._update(rate)
            self._bar.stop()  # its last render is on screen now; the summary goes below it
        self._line(
            f"{self.ok} of {count(self.total, 'image')} written to {directory}, {self.failed} failed; "
            f"{count(self.tiles, 'tile')} in {elapsed:.1f} s ({rate:.1f} images/s)"
        )

    def fail_if_any(self) -> None:
        """Exit 1 if an image failed; a quiet run says how many, having printed no summary."""
        if self.failed:
            if self.quiet:
                fail(f"{self.failed} of {count(self.total, 'image')} failed")
            sys.exit(1)
