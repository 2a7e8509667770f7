"""Flower for the local cluster: the Celery dashboard on a free loopback port."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from collections.abc import Mapping

from ..errors import ClusterError
from .procs import LOOPBACK, PORT_ATTEMPTS, Child, free_port, port_taken, url_password

__all__ = ["Flower"]


class Flower(Child):
    """Flower on a free loopback port, its API open (``FLOWER_UNAUTHENTICATED_API``)."""

    label = "flower"

    def __init__(
        self,
        url: str,
        *,
        app: str = "tilechord",
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.broker_url = url
        self.app = app
        self.env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.port: int | None = None

    def __repr__(self) -> str:
        return f"Flower(port={self.port}, app={self.app!r}, pid={self.pid}, running={self.running})"

    @property
    def url(self) -> str:
        if self.port is None:
            raise ClusterError("Flower has not been started")
        return f"http://{LOOPBACK}:{self.port}"

    def _redact(self, text: str) -> str:
        password = url_password(self.broker_url)
        return text.replace(password, "***") if password else text

    def _launch(self) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            **self.env,
            "TILECHORD_REDIS_URL": self.broker_url,
            "FLOWER_UNAUTHENTICATED_API": "true",
            "PYTHONUNBUFFERED": "1",
        }
        argv = [
            sys.executable, "-m", "celery", "-A", self.app, "flower",
            f"--address={LOOPBACK}", f"--port={self.port}",
        ]  # fmt: skip
        self._spawn(argv, env, "flower.log")

    def start(self, wait: bool = True) -> Flower:
        """Start Flower; with *wait*, return only once it answers HTTP."""
        if self.running:
            return self
        self._make_dir()
        self._launch()
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``/healthcheck``; start again on another port if ours was taken meanwhile."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        attempts = 1
        while True:
            if self._proc is None:
                raise ClusterError("Flower has not been started")
            code = self._proc.poll()
            if code is not None:
                if port_taken(self.log_tail()) and attempts < PORT_ATTEMPTS:
                    attempts += 1
                    self._terminate(0)
                    self._launch()
                    continue
                raise self._error(f"Flower exited with code {code} before it was ready")
            try:
                with urllib.request.urlopen(f"{self.url}/healthcheck", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:  # URLError included: not listening yet
                pass
            if time.monotonic() > deadline:
                raise self._error(f"Flower did not answer on {self.url} within {timeout:g}s")
            time.sleep(0.1)
