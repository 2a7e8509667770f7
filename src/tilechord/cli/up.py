"""``tilechord up``: a local cluster (Redis, workers, Flower) for other shells to use."""

from __future__ import annotations

import importlib.util
import signal
import time

import click

from .. import __version__
from ..config import Settings, redact_url
from .report import fail

__all__ = ["FLOWER_ENV", "up"]

#: Flower's tasks page shows a job's arguments (job id, tile, pipeline) and results
FLOWER_ENV = {"FLOWER_TASKS_COLUMNS": "name,state,args,result,runtime,worker"}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command()
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
        fail("Flower is not installed: pip install 'flower>=2.0' (or run tilechord up --no-flower)")
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
            fail("a process of the local cluster died; stopping the rest")
    click.echo("tilechord: stopped", err=True)
