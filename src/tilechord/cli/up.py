"""``tilechord up``: a local cluster (Redis, workers, Flower) for other shells and machines."""

from __future__ import annotations

import importlib.util
import ipaddress
import signal
import time
from typing import TYPE_CHECKING

import click

from .. import __version__
from ..config import Settings, redact_url
from ..errors import TilechordError
from .report import fail

if TYPE_CHECKING:
    from ..local import LocalCluster

__all__ = ["FLOWER_ENV", "up"]

#: Flower's tasks page shows a job's arguments (job id, tile, pipeline) and results
FLOWER_ENV = {"FLOWER_TASKS_COLUMNS": "name,state,args,result,runtime,worker"}

#: what stopping does, said once in --help and once when it happens
STOP_NOTE = "jobs still running are abandoned (their clients get an error)"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An IP address to bind, checked before anything starts."""
    from ..local import check_address

    try:
        return check_address(value)
    except TilechordError as exc:
        raise click.BadParameter(str(exc)) from None


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _announce(cluster: LocalCluster) -> None:
    """Print where everything is and the line that points other shells (or machines) at it."""
    assert cluster.redis is not None and cluster.pool is not None
    redis, pool, url = cluster.redis, cluster.pool, cluster.public_url
    remote = not _loopback(redis.bind)
    click.echo(f"tilechord {__version__}: local cluster up")
    click.echo(f"  redis    {redact_url(url)}  (valkey, pid {redis.pid}, on {redis.bind})")
    processes = f"{cluster.workers} process{'' if cluster.workers == 1 else 'es'}"
    click.echo(f"  workers  {processes}, node {pool.nodename} (pid {pool.pid})")
    if cluster.flower is not None:
        login = f"  (user admin, password {cluster.flower.password})" if cluster.flower.password else ""
        click.echo(f"  flower   {cluster.public_flower_url}{login}")
    click.echo(f"Point other {'shells and machines' if remote else 'shells'} at it:")
    click.echo(f"  export TILECHORD_REDIS_URL={url}")
    if remote:
        click.echo("  (then, on a worker machine: celery -A tilechord worker -Q tilechord)")
        click.echo(
            f"Redis takes connections on {redis.bind} port {redis.port}, with a password but no TLS: "
            "open that port only to your workers' subnet."
        )
    click.echo(f"Ctrl-C stops it; {STOP_NOTE}.")


@click.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes [env: TILECHORD_WORKERS, default: one per core].",
)
@click.option("--flower/--no-flower", default=True, show_default=True, help="Start Flower too.")
@click.option(
    "--listen",
    metavar="ADDR",
    default="127.0.0.1",
    show_default=True,
    callback=_address,
    help="IP address Redis listens on: 0.0.0.0 (all) or a LAN address lets other machines' workers in.",
)
@click.option(
    "--flower-listen",
    metavar="ADDR",
    default="127.0.0.1",
    show_default=True,
    callback=_address,
    help="IP address Flower listens on; beyond loopback it asks for user admin and a printed password.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Redis's port, e.g. 6379 for a firewall rule [default: a free one].",
)
def up(workers: int | None, flower: bool, listen: str, flower_listen: str, port: int | None) -> None:
    """Run an embedded Redis, a worker pool and Flower on this machine until Ctrl-C.

    Prints their addresses and the `export TILECHORD_REDIS_URL=...` line that points other
    shells (tilechord run, the Python API, more `celery -A tilechord worker`s) at them.
    Redis and Flower listen on 127.0.0.1 only unless --listen / --flower-listen say
    otherwise; Redis always has a fresh random password, and no TLS.  Ctrl-C or SIGTERM
    stops everything at once: jobs still running are abandoned (their clients get an
    error), and no process is left behind.
    """
    if flower and importlib.util.find_spec("flower") is None:
        fail("Flower is not installed: pip install 'flower>=2.0' (or run tilechord up --no-flower)")
    settings = Settings.from_env()
    from ..local import LocalCluster  # late: `tilechord --help` stays fast

    # Stopping is this command's normal end: SIGTERM and a closed terminal stop it like
    # Ctrl-C, and Ctrl-C works even if our parent started us with SIGINT ignored (`&`).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    cluster = LocalCluster(
        settings,
        workers=workers,
        flower=flower,
        env=FLOWER_ENV,
        listen=listen,
        flower_listen=flower_listen,
        port=port,
    )
    with cluster:
        _announce(cluster)
        try:
            while cluster.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            click.echo(f"tilechord: stopping; {STOP_NOTE}", err=True)
        else:
            fail("a process of the local cluster died; stopping the rest")
    click.echo("tilechord: stopped", err=True)
