"""``tilechord run``: one image to one file, or a batch of images into a directory.

Everything that can be checked without a cluster (the inputs, the output path, the
pipeline, the grid, the format) is checked first, so a mistake costs no cluster start.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import click

from ..client import Client, MapResult, big_tiff, read_source
from ..config import Settings
from ..errors import InvalidOutput, UnsupportedFormat
from ..imaging import parse_grid
from ..imaging.encode import format_for_path, normal_format
from ..ops import parse_pipeline
from .outputs import (
    batch_directory,
    check_targets,
    check_writable,
    expand_inputs,
    make_directory,
    names_directory,
    plan_outputs,
    write_atomic,
)
from .report import OneReport, Report

__all__ = ["run"]


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


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),  # a str: a trailing / (a directory) would not survive a Path
    help="Where to write the result; its extension picks the format (.png, .jpg, .webp ...).  "
    "An existing directory, or a path ending in /, receives <name>.<ext> instead (created "
    "if missing); with several inputs, a directory or a glob, -o must be such a directory.",
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
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="No progress output: no bar of tiles for one image on a terminal, no lines or bar for a "
    "batch (errors still go to stderr).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to wait for each job before giving up [env: TILECHORD_JOB_TIMEOUT, default 600].",
)
def run(
    inputs: tuple[str, ...],
    output: str,
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

    On a terminal, one image shows a bar of tiles on stderr and ends with a line saying
    what was written; piped or redirected, it prints nothing but errors.  An output that
    cannot be written (a missing directory, a read-only one) is refused before any work.

    \b
    Examples:
      tilechord run photo.jpg -o out.png --op grayscale --op gaussian_blur:radius=4 --grid 2x1
      tilechord run shots/ -o edited/ --op sharpen --grid 2x2
      tilechord run 'shots/*.jpg' more.png -o edited/ --format png
    """
    paths, batch = expand_inputs(inputs)
    if batch:
        directory = batch_directory(output, len(paths))
        _run_batch(paths, directory, list(ops), grid or "auto", fmt, redis_url, workers, jobs, quiet, timeout)
        return
    one = _One(paths[0], Path(output), names_directory(output), fmt)
    _run_one(one, list(ops), grid or "2x1", redis_url, workers, timeout, quiet)


@dataclasses.dataclass(frozen=True)
class _One:
    """A single image's run: its input, and where (a file, or into a directory) it goes."""

    input: Path
    output: Path
    into: bool  # -o is a directory (existing, or ending in /): write <name>.<ext> there
    fmt: str | None

    def target(self) -> tuple[Path, str | None]:
        """The file to write and its format; into a directory, as a batch of one would."""
        if not self.into:
            return self.output, self.fmt or format_for_path(str(self.output))
        fmt = normal_format(self.fmt) if self.fmt is not None else None
        (target,) = plan_outputs([self.input], self.output, fmt)
        return target, fmt  # None: the input's own format, as in a batch


def _run_one(
    one: _One,
    ops: list[str],
    grid: str,
    redis_url: str | None,
    workers: int | None,
    timeout: float | None,
    quiet: bool,
) -> None:
    settings = _settings(redis_url, timeout)
    # a big TIFF is planned from its header and sent as it is read; anything else is read here
    source: bytes | Path = big_tiff(one.input) or read_source(one.input, settings.max_bytes)
    target, out_format = one.target()
    if one.input.resolve() == target.resolve():
        raise UnsupportedFormat(f"refusing to overwrite the input {one.input}; choose another output path")
    Client(settings).plan(source, ops, grid, out_format)  # fail before starting anything
    if one.into:
        make_directory(one.output)
    check_writable(target)
    with _client(settings, workers) as client, OneReport(quiet) as report:
        job = client.submit(source, ops, grid=grid, format=out_format)
        del source  # the worker has it: a big file need not stay in this process too
        written = [0]

        def save(handle: BinaryIO) -> None:  # the result streamed from Redis, never held whole
            written[0] = job.save(handle, on_progress=report.on_progress)

        try:
            write_atomic(target, save)
        except OSError as exc:
            raise InvalidOutput(f"cannot write {target}: {(exc.strerror or str(exc)).lower()}") from None
        report.written(target, written[0], job.tiles)


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
    out_format = normal_format(fmt) if fmt is not None else None
    settings = _settings(redis_url, timeout)
    pipeline = parse_pipeline(ops)  # fail before starting anything
    if grid.strip().lower() != "auto":
        parse_grid(grid, max_side=settings.max_side)
    make_directory(directory)
    targets = plan_outputs(inputs, directory, out_format)
    check_targets(targets)
    in_flight = jobs if jobs is not None else 2 * (workers or settings.workers)
    with _client(settings, workers) as client, Report(len(inputs), quiet) as report:
        results = client.map(
            inputs, pipeline, grid=grid, format=out_format, jobs=in_flight, on_progress=report.progress
        )
        try:
            for result in results:
                _write_result(result, inputs[result.index], targets[result.index], report)
        finally:
            results.close()  # cancels what is still in flight (Ctrl-C, a failure of ours)
        report.summary(directory)
    report.fail_if_any()


def _write_result(result: MapResult, source: Path, target: Path, report: Report) -> None:
    """Write one finished image, or report why it has no output: a failed job or a failed write."""
    if result.error is not None:
        report.error(source, str(result.error))
        return
    assert result.data is not None
    try:
        write_atomic(target, result.data)
    except (OSError, InvalidOutput) as exc:
        reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
        report.error(source, f"cannot write {target}: {reason}")
        return
    report.done(source, result, target)
