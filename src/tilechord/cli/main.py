"""The command line: ``tilechord run``, ``tilechord up``, ``tilechord ops``.

Errors are one line on stderr and a non-zero exit status (1 for a failed job, 2 for a
usage error, 130 after Ctrl-C).  Outputs are written to a temporary file beside the
target and renamed into place, so a failed or interrupted run never leaves a
half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from PIL import Image

from .. import __version__
from ..client import Client, MapProgress, MapResult, read_source
from ..config import Settings, redact_url
from ..errors import InvalidImage, TilechordError, UnsupportedFormat
from ..imaging import codec, parse_grid
from ..ops import Kind, parse_pipeline, registry
from ..worker.app import load_plugins

__all__ = ["main", "cli", "write_atomic", "expand_inputs", "plan_outputs", "safe_name"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write *data* to *path* through a temporary file and a rename."""
    directory = path.parent
    if not directory.is_dir():
        raise InvalidImage(f"output directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".part")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would; mkstemp makes files private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _settings(redis_url: str | None, timeout: float | None) -> Settings:
    settings = Settings.from_env()
    if timeout is not None:
        settings = dataclasses.replace(settings, job_timeout=timeout)
    if redis_url:
        settings = settings.with_redis(redis_url)
    return settings


@contextlib.contextmanager
def _client(settings: Settings, workers: int | None) -> Iterator[Client]:
    """A client on the configured Redis, or on a local cluster started for this command."""
    if settings.redis_url is not None:
        client = Client(settings)
        try:
            yield client
        finally:
            client.close()
        return
    from ..local import LocalCluster

    with LocalCluster(settings, workers=workers) as cluster:
        client = Client(cluster.settings)
        try:
            yield client
        finally:
            client.close()


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"tilechord: error: {message}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turn tilechord's errors and Ctrl-C into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except TilechordError as exc:
            _fail(str(exc))
        except BrokenPipeError:  # `tilechord ops | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("tilechord: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        return None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilechord")
def cli() -> None:
    """Edit images in parallel on a Celery cluster over Redis, seam-free.

    With TILECHORD_REDIS_URL (or --redis) set, jobs go to the workers on that Redis
    (start them with `celery -A tilechord worker`).  Without it, each command starts an
    embedded Redis and a local worker pool, and stops them when it ends.
    """


@cli.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Where to write the result; its extension picks the format (.png, .jpg, .webp ...).  "
    "With several inputs, a directory or a glob, a directory (created if missing) that "
    "receives <name>.<ext> for each input.",
)
@click.option(
    "--op",
    "ops",
    multiple=True,
    metavar="SPEC",
    help="An operation, applied in the order given: NAME or NAME:key=value,... "
    "(e.g. --op grayscale --op gaussian_blur:radius=4).  None at all copies the pixels.",
)
@click.option(
    "--grid",
    default=None,
    metavar="COLSxROWS",
    help="How to cut the image into tiles, one edit task each; 'auto' picks one from the "
    "image size and the number of workers.  [default: 2x1 for one image; auto for a batch, "
    "where small images then travel several to a task]",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    help="Output format, overriding the extension (PNG, JPEG ...); in a batch, every "
    "output's format (default: each input's own).",
)
@click.option(
    "--redis", "redis_url", default=None, metavar="URL", help="Redis to use [env: TILECHORD_REDIS_URL]."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of the local cluster (when no Redis is given) [default: one per core].",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Batch: tasks in flight at once (a task carries one image, or up to 64 small ones) "
    "[default: twice the workers].",
)
@click.option("-q", "--quiet", is_flag=True, help="Batch: no progress output (errors still go to stderr).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for each job before giving up [env: TILECHORD_JOB_TIMEOUT, default 600].",
)
def run(
    inputs: tuple[str, ...],
    output: Path,
    ops: tuple[str, ...],
    grid: str | None,
    fmt: str | None,
    redis_url: str | None,
    workers: int | None,
    jobs: int | None,
    quiet: bool,
    timeout: float | None,
) -> None:
    """Edit INPUT and write the result to OUTPUT; or edit many images into a directory.

    Several inputs, a directory (its image files) or a quoted glob make a batch: every
    image is its own job, a bounded number run at once, and each result is written to
    OUTPUT/<name>.<ext> as soon as it is ready.  A failed image is reported by name and
    the others go on; the exit status is 1 if any failed.

    \b
    Examples:
      tilechord run photo.jpg -o out.png --op grayscale --op gaussian_blur:radius=4 --grid 2x1
      tilechord run shots/ -o edited/ --op sharpen --grid 2x2
      tilechord run 'shots/*.jpg' more.png -o edited/ --format png
    """
    paths, batch = expand_inputs(inputs)
    if batch or output.is_dir() or str(output).endswith(("/", os.sep)):
        _run_batch(paths, output, list(ops), grid or "auto", fmt, redis_url, workers, jobs, quiet, timeout)
        return
    _run_one(paths[0], output, list(ops), grid or "2x1", fmt, redis_url, workers, timeout)


def _run_one(
    input: Path,
    output: Path,
    ops: list[str],
    grid: str,
    fmt: str | None,
    redis_url: str | None,
    workers: int | None,
    timeout: float | None,
) -> None:
    if not output.parent.is_dir():
        raise InvalidImage(f"output directory {output.parent} does not exist")
    out_format = fmt or codec.format_for_path(str(output))
    if input.resolve() == output.resolve():
        raise UnsupportedFormat(f"refusing to overwrite the input {input}; choose another output path")
    settings = _settings(redis_url, timeout)
    source = read_source(input, settings.max_bytes)
    Client(settings).plan(source, ops, grid, out_format)  # fail before starting anything
    with _client(settings, workers) as client:
        data = client.process(source, ops, grid=grid, format=out_format)
    write_atomic(output, data)


# -- batches -----------------------------------------------------------------------------------

_GLOB_CHARS = frozenset("*?[")
#: the extension written for a format given with --format (others: Pillow's first one)
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_NAME_BYTES = 200


def _image_suffixes() -> set[str]:
    Image.init()
    return set(Image.registered_extensions())


def expand_inputs(args: tuple[str, ...]) -> tuple[list[Path], bool]:
    """The input files, and whether they make a batch (several, a directory or a glob).

    A directory gives its image files (by extension, hidden ones skipped, sorted), a glob
    the files it matches (for globs the shell left alone, e.g. quoted).  A missing plain
    path is kept: its job reports it.
    """
    paths: list[Path] = []
    batch = len(args) > 1
    suffixes = _image_suffixes()
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            batch = True
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
            )
            if not found:
                raise InvalidImage(f"no image files in the directory {path}")
            paths.extend(found)
        elif not path.exists() and _GLOB_CHARS & set(arg):
            batch = True
            matched = sorted(Path(m) for m in glob.glob(arg) if Path(m).is_file())
            if not matched:
                raise InvalidImage(f"no file matches {arg}")
            paths.extend(matched)
        else:
            paths.append(path)
    return paths, batch


def _normal_format(fmt: str) -> str:
    Image.init()
    name = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt.upper(), fmt.upper())
    if name not in Image.SAVE:
        known = ", ".join(sorted(Image.SAVE))
        raise UnsupportedFormat(f"unknown output format {fmt!r}; Pillow can write {known}")
    return name


def _extension(fmt: str) -> str:
    if fmt in _EXTENSIONS:
        return _EXTENSIONS[fmt]
    for ext, name in Image.registered_extensions().items():
        if name == fmt:
            return ext
    return "." + fmt.lower()


def safe_name(stem: str, ext: str) -> str:
    """A file name that stays inside the output directory, whatever the input was called.

    Path separators, control characters (a newline, an escape sequence) and leading dots
    become ``_``; the stem is cut to 200 bytes of UTF-8.  The result is never ``.``,
    ``..``, empty, or hidden.
    """
    clean = _UNSAFE.sub("_", stem).strip()
    clean = re.sub(r"^\.+", lambda m: "_" * len(m.group()), clean)
    clean = clean.encode()[:_MAX_NAME_BYTES].decode("utf-8", "ignore") or "image"
    suffix = _UNSAFE.sub("_", ext)[:16]
    return clean + suffix


def plan_outputs(inputs: list[Path], directory: Path, fmt: str | None) -> list[Path]:
    """``directory/<stem>.<ext>`` for each input, in order, each unique and inside *directory*.

    Two inputs with the same name (``a/x.jpg`` and ``b/x.jpg``, or ``x.jpg`` and ``x.png``
    with ``--format png``) get ``x.jpg`` and ``x-2.jpg``, in the order given; an output
    never takes the path of an input.  The extension comes from ``--format`` or the input.
    """
    ext = _extension(fmt) if fmt is not None else None
    sources = {p.resolve() for p in inputs}
    taken: set[str] = set()
    outputs = []
    for path in inputs:
        suffix = ext if ext is not None else path.suffix.lower()
        stem = path.stem if path.suffix else path.name
        name = safe_name(stem, suffix)
        count = 1
        while name in taken or (directory / name).resolve() in sources:
            count += 1
            name = safe_name(f"{stem}-{count}", suffix)
        taken.add(name)
        target = directory / name
        assert target.parent == directory and name not in (".", "..")
        outputs.append(target)
    return outputs


def shown(path: object) -> str:
    """*path* for a terminal: control characters in a name are escaped, not obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


class _Report:
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
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
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
            self._task = self._bar.add_task("batch", total=total, tiles="0/0", rate="0.0", failed="")

    def __enter__(self) -> _Report:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.ok + self.failed) / elapsed if elapsed > 0 else 0.0

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
        count = f"[{self.ok + self.failed:>{self.width}}/{self.total}]"
        if self._bar is None:
            self._line(
                f"{count} ok     {shown(source)} -> {shown(target)} "
                f"({result.tiles} tiles, {result.seconds:.2f} s, {self._rate():.1f} images/s)"
            )

    def error(self, source: object, message: str) -> None:
        self.failed += 1
        count = f"[{self.ok + self.failed:>{self.width}}/{self.total}]"
        if self._bar is None and not self.quiet:
            click.echo(f"{count} failed {shown(source)}: {message}")
        text = f"tilechord: error: {shown(source)}: {message}"
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=True)

    def summary(self, directory: Path) -> None:
        elapsed = time.monotonic() - self.started
        line = (
            f"{self.ok} of {self.total} images written to {directory}, {self.failed} failed; "
            f"{self.tiles} tiles in {elapsed:.1f} s ({self._rate():.1f} images/s)"
        )
        self._line(line)


def _run_batch(
    inputs: list[Path],
    directory: Path,
    ops: list[str],
    grid: str,
    fmt: str | None,
    redis_url: str | None,
    workers: int | None,
    jobs: int | None,
    quiet: bool,
    timeout: float | None,
) -> None:
    out_format = _normal_format(fmt) if fmt is not None else None
    settings = _settings(redis_url, timeout)
    pipeline = parse_pipeline(ops)  # fail before starting anything
    if grid.strip().lower() != "auto":
        parse_grid(grid, max_side=settings.max_side)
    if directory.exists() and not directory.is_dir():
        raise InvalidImage(f"{directory} is a file; with several inputs, -o names a directory")
    directory.mkdir(parents=True, exist_ok=True)
    targets = plan_outputs(inputs, directory, out_format)
    in_flight = jobs if jobs is not None else 2 * (workers or settings.workers)
    with _client(settings, workers) as client, _Report(len(inputs), quiet) as report:
        results = client.map(
            inputs, pipeline, grid=grid, format=out_format, jobs=in_flight, on_progress=report.progress
        )
        try:
            for result in results:
                source = inputs[result.index]
                if result.error is not None:
                    report.error(source, str(result.error))
                    continue
                assert result.data is not None
                try:
                    write_atomic(targets[result.index], result.data)
                except OSError as exc:
                    report.error(source, f"cannot write {targets[result.index]}: {exc.strerror or exc}")
                    continue
                report.done(source, result, targets[result.index])
        finally:
            results.close()  # cancels what is still in flight (Ctrl-C, a failure of ours)
        report.summary(directory)
    if report.failed:
        if quiet:
            click.echo(f"tilechord: error: {report.failed} of {report.total} images failed", err=True)
        sys.exit(1)


# -- a local cluster for other shells --------------------------------------------------------


#: Flower's tasks page shows a job's arguments (job id, tile, pipeline) and results
FLOWER_ENV = {"FLOWER_TASKS_COLUMNS": "name,state,args,result,runtime,worker"}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes [env: TILECHORD_WORKERS, default: one per core].",
)
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start Flower too.")
def up(workers: int | None, flower: bool) -> None:
    """Run an embedded Redis, a worker pool and Flower on this machine until Ctrl-C.

    Prints their addresses and the `export TILECHORD_REDIS_URL=...` line that points other
    shells (tilechord run, the Python API, more `celery -A tilechord worker`s on this
    machine) at them.  Redis and Flower listen on 127.0.0.1 only.  Ctrl-C or SIGTERM stops
    everything: running tasks finish first.
    """
    if flower and importlib.util.find_spec("flower") is None:
        _fail("Flower is not installed: pip install 'flower>=2.0' (or run tilechord up --no-flower)")
    settings = Settings.from_env()
    from ..local import LocalCluster

    # Stopping is this command's normal end: SIGTERM and a closed terminal stop it like
    # Ctrl-C, and Ctrl-C works even if our parent started us with SIGINT ignored (`&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    cluster = LocalCluster(settings, workers=workers, flower=flower, env=FLOWER_ENV)
    with cluster:
        assert cluster.redis is not None and cluster.pool is not None
        click.echo(f"tilechord {__version__}: local cluster up")
        click.echo(f"  redis    {redact_url(cluster.url)}  (valkey, pid {cluster.redis.pid})")
        click.echo(
            f"  workers  {cluster.workers} processes, node {cluster.pool.nodename} (pid {cluster.pool.pid})"
        )
        if cluster.flower_url is not None:
            click.echo(f"  flower   {cluster.flower_url}")
        click.echo("Point other shells at it:")
        click.echo(f"  export TILECHORD_REDIS_URL={cluster.url}")
        click.echo("Ctrl-C stops it.")
        try:
            while cluster.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            click.echo("tilechord: stopping", err=True)
        else:
            _fail("a process of the local cluster died; stopping the rest")
    click.echo("tilechord: stopped", err=True)


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


@cli.command("ops")
@click.option("--markdown", is_flag=True, help="Print a Markdown table (as in README.md).")
def list_ops(markdown: bool) -> None:
    """List every operation with its parameters, kind and reach (halo).

    Includes custom operations from the modules named in TILECHORD_PLUGINS.
    """
    load_plugins(Settings.from_env().plugins)
    rows = ops_rows()
    if markdown:
        click.echo("| operation | parameters | kind | reach | what it does |")
        click.echo("| --- | --- | --- | --- | --- |")
        for name, params, kind, reach, doc in rows:
            click.echo(f"| `{name}` | {params} | {kind} | {reach} | {doc} |")
        return
    headers = ("operation", "kind", "reach", "parameters")
    table = [(r[0], r[2], r[3], r[1]) for r in rows]
    widths = [max(len(r[i]) for r in [headers, *table]) for i in range(3)]
    for row, doc in zip([headers, *table], ["", *(r[4] for r in rows)], strict=True):
        click.echo("  ".join([*(c.ljust(w) for c, w in zip(row[:3], widths, strict=False)), row[3]]).rstrip())
        if doc:
            click.echo(f"    {doc}")


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: the local cluster stops in order


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli.main(args=argv, prog_name="tilechord")


if __name__ == "__main__":  # pragma: no cover
    main()
