"""The ``tilechord`` command group and its entry point.

Errors are one line on stderr and a non-zero exit status (1 for a failed job, 2 for a
usage error, 130 after Ctrl-C); the commands themselves just raise.
"""

from __future__ import annotations

import os
import signal
import sys

import click

from .. import __version__
from ..errors import TilechordError
from .ops import list_ops
from .report import fail
from .run import run
from .up import up

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turn tilechord's errors and Ctrl-C into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except TilechordError as exc:
            fail(str(exc))
        except BrokenPipeError:  # `tilechord ops | head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("tilechord: interrupted", err=True)
            sys.exit(130)
        except OSError as exc:
            fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilechord")
def cli() -> None:
    """Edit images in parallel on a Celery cluster over Redis, seam-free.

    With TILECHORD_REDIS_URL (or --redis) set, jobs go to the workers on that Redis
    (start them with `celery -A tilechord worker`).  Without it, each command starts an
    embedded Redis and a local worker pool, and stops them when it ends.
    """


cli.add_command(run)
cli.add_command(up)
cli.add_command(list_ops)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: the local cluster stops in order


def main(argv: list[str] | None = None) -> None:
    """The console script: SIGTERM unwinds like Ctrl-C, so a local cluster stops in order.

    Ctrl-C raises KeyboardInterrupt even when this process was started with SIGINT ignored
    (Python then leaves it ignored): a run must stop its tiles and say so on Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    cli.main(args=argv, prog_name="tilechord")


if __name__ == "__main__":  # pragma: no cover
    main()
