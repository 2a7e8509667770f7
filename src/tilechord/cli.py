"""The command line: ``tilechord run``, ``tilechord ops``.

Errors are one line on stderr and a non-zero exit status (1 for a failed job, 2 for a
usage error, 130 after Ctrl-C).  Outputs are written to a temporary file beside the
target and renamed into place, so a failed or interrupted run never leaves a
half-written file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from . import __version__, codec
from .api import Client, read_source
from .celery_app import load_plugins
from .config import Settings
from .errors import InvalidImage, TilechordError, UnsupportedFormat
from .operations import Kind, registry

__all__ = ["main", "cli", "write_atomic"]


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
    from .cluster import LocalCluster

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
@click.argument("input", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the result; its extension picks the format (.png, .jpg, .webp ...).",
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
    default="2x1",
    show_default=True,
    metavar="COLSxROWS",
    help="How to cut the image into tiles, one edit task each; 'auto' picks one from the "
    "image size and the number of workers.",
)
@click.option(
    "--format", "fmt", default=None, help="Output format, overriding the extension (PNG, JPEG ...)."
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
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for the job before giving up [env: TILECHORD_JOB_TIMEOUT, default 600].",
)
def run(
    input: Path,
    output: Path,
    ops: tuple[str, ...],
    grid: str,
    fmt: str | None,
    redis_url: str | None,
    workers: int | None,
    timeout: float | None,
) -> None:
    """Edit INPUT and write the result to OUTPUT.

    \b
    Example:
      tilechord run photo.jpg -o out.png --op grayscale --op gaussian_blur:radius=4 --grid 2x1
    """
    if not output.parent.is_dir():
        raise InvalidImage(f"output directory {output.parent} does not exist")
    out_format = fmt or codec.format_for_path(str(output))
    if input.resolve() == output.resolve():
        raise UnsupportedFormat(f"refusing to overwrite the input {input}; choose another output path")
    settings = _settings(redis_url, timeout)
    source = read_source(input, settings.max_bytes)
    Client(settings).plan(source, list(ops), grid, out_format)  # fail before starting anything
    with _client(settings, workers) as client:
        data = client.process(source, list(ops), grid=grid, format=out_format)
    write_atomic(output, data)


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
