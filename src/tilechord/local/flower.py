"""Flower for the local cluster: the Celery dashboard on a free port, loopback unless asked."""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Mapping

from ..errors import ClusterError
from .procs import (
    LOOPBACK,
    PORT_ATTEMPTS,
    Child,
    check_address,
    connect_host,
    free_port,
    port_taken,
    url_host,
    url_password,
)

#: the basic-auth user of a Flower that listens beyond loopback
FLOWER_USER = "admin"

__all__ = ["Flower"]


class Flower(Child):
    """Flower on a free port of *address*.

    On loopback its API is open to local users (``FLOWER_UNAUTHENTICATED_API``).  Anywhere
    else it shows every job's arguments to the network, so it gets basic auth: user
    :data:`FLOWER_USER` and *password* (a random one if none is given), passed in the
    environment (``FLOWER_BASIC_AUTH``), never on the command line where ``ps`` shows it.
    """

    label = "flower"

    def __init__(
        self,
        url: str,
        *,
        app: str = "tilechord",
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        address: str = LOOPBACK,
        password: str | None = None,
    ) -> None:
        super().__init__()
        self.address = check_address(address)
        if password is None and not ipaddress.ip_address(self.address).is_loopback:
            password = secrets.token_urlsafe(16)
        #: the basic-auth password (user :data:`FLOWER_USER`), or ``None`` for an open loopback Flower
        self.password = password
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
        return self.url_for(connect_host(self.address))

    def url_for(self, host: str) -> str:
        """Flower's base URL through *host* (no credentials in it)."""
        if self.port is None:
            raise ClusterError("Flower has not been started")
        return f"http://{url_host(host)}:{self.port}"

    def _redact(self, text: str) -> str:
        secrets_ = sorted((s for s in (url_password(self.broker_url), self.password) if s), key=len)
        for secret in reversed(secrets_):  # the longer first: one may contain the other
            text = text.replace(secret, "***")
        return text

    def _launch(self) -> None:
        self.port = free_port(self.address)
        env = {**os.environ, **self.env, "TILECHORD_REDIS_URL": self.broker_url, "PYTHONUNBUFFERED": "1"}
        if self.password is None:
            env["FLOWER_UNAUTHENTICATED_API"] = "true"
        else:
            env.pop("FLOWER_UNAUTHENTICATED_API", None)
            env["FLOWER_BASIC_AUTH"] = f"{FLOWER_USER}:{self.password}"
        argv = [
            sys.executable, "-m", "celery", "-A", self.app, "flower",
            f"--address={self.address}", f"--port={self.port}",
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
