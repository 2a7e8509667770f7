"""The local worker pool: one ``celery worker`` process, and the probe that tells it is ready."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..config import QUEUE, redact_url, redis_ssl_options
from ..errors import ClusterError
from .procs import Child, children_of, url_password

__all__ = ["WorkerPool", "ping_app"]


def ping_app(url: str) -> Any:
    """A bare Celery app on *url*, enough for ``control.ping``: it needs none of our tasks.

    kombu retries a publish forever by default when the broker is down; one retry and a
    short connect timeout keep :meth:`WorkerPool.wait_ready` within its deadline.  A
    ``rediss://`` URL gets the same verified TLS as the app (kombu alone would fall back to
    an unverified connection, and send the password over it).
    """
    from celery import Celery

    app = Celery("tilechord-probe", broker=url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=2.0,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        broker_transport_options={"max_retries": 1},
        accept_content=["json"],
        task_serializer="json",
    )
    ssl_options = redis_ssl_options(url)
    if ssl_options:
        app.conf.broker_use_ssl = ssl_options
    return app


class WorkerPool(Child):
    """One ``celery worker`` process with a prefork pool of *concurrency* children.

    Readiness is a ``control.ping`` addressed to this worker's unique node name: an answer
    proves the worker is connected to the broker and consuming, whatever the app's logging.
    """

    label = "worker"
    stop_timeout = 10.0

    def __init__(
        self,
        url: str,
        concurrency: int = 1,
        *,
        app: str = "tilechord",
        env: Mapping[str, str] | None = None,
        queues: str = QUEUE,
        loglevel: str = "WARNING",
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        from celery.utils.nodenames import host_format

        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.url = url
        self.concurrency = concurrency
        self.app = app
        self.env = dict(env or {})
        self.queues = queues
        self.loglevel = loglevel
        self.startup_timeout = startup_timeout
        #: unique, so a ping reaches this worker only; %h expanded here exactly as Celery does
        self.nodename: str = host_format(f"tilechord-local-{uuid.uuid4().hex[:12]}@%h")

    def __repr__(self) -> str:
        return (
            f"WorkerPool({redact_url(self.url)!r}, concurrency={self.concurrency}, app={self.app!r}, "
            f"nodename={self.nodename!r}, pid={self.pid}, running={self.running})"
        )

    def _redact(self, text: str) -> str:
        password = url_password(self.url)
        return text.replace(password, "***") if password else text

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "--pool", "prefork",
            "--concurrency", str(self.concurrency),
            "--loglevel", self.loglevel,
            "-Q", self.queues,
            "--without-gossip",
            "--without-mingle",
            "-n", self.nodename,
        ]  # fmt: skip

    def start(self, wait: bool = True) -> WorkerPool:
        """Start the worker; with *wait*, return only once it answers a ping."""
        if self.running:
            return self
        self._make_dir()
        env = {**os.environ, **self.env, "TILECHORD_REDIS_URL": self.url, "PYTHONUNBUFFERED": "1"}
        self._spawn(self.argv(), env, "worker.log")
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Ping this worker until it answers; raise :class:`ClusterError` if it dies or is late."""
        if self._proc is None:
            raise ClusterError("the worker pool has not been started")
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        app = ping_app(self.url)
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise self._error(f"the celery worker exited with code {code} before it was ready")
                try:
                    replies = app.control.ping(destination=[self.nodename], timeout=0.5)
                except Exception as exc:  # broker not reachable yet: keep trying
                    last = exc
                    replies = []
                    time.sleep(0.2)
                if any(self.nodename in reply for reply in replies or ()):
                    return
                if time.monotonic() > deadline:
                    why = f" (last error: {last})" if last else ""
                    raise self._error(f"the celery worker did not answer a ping within {timeout:g}s{why}")
        finally:
            app.close()

    def child_pids(self) -> list[int]:
        """The prefork pool's processes (children of the main worker process)."""
        if not self.running or self._proc is None:
            return []
        return children_of(self._proc.pid)

    def stop(self, timeout: float | None = None, *, graceful: bool = True) -> None:
        """Warm shutdown (SIGTERM: running tasks finish), SIGKILL of the group after *timeout*.

        ``graceful=False`` kills the worker and its pool at once, running tasks and all.
        """
        super().stop(timeout, graceful=graceful)
