"""Process plumbing for the local cluster: children that cannot outlive us.

Nothing the local cluster starts may outlive us, however we end:

* every child runs in its own session (``start_new_session``), so a Ctrl-C in the
  terminal reaches only us and we shut the children down in order, instead of the
  terminal delivering a raw SIGINT to the pool in the middle of a task;
* every child asks the kernel to SIGKILL it when we die (``PR_SET_PDEATHSIG`` on Linux),
  so not even a SIGKILL of our process leaves a Redis or a worker behind (Celery sets
  the same on its pool children, so the chain holds down to them);
* a running :class:`~tilechord.local.LocalCluster` is registered with :mod:`atexit`;
* stopping sends SIGTERM (a warm shutdown) and, after a timeout, SIGKILLs the child's
  whole process group, then waits until no member of the group is left.

Internal to :mod:`tilechord.local`: only :func:`pid_alive` is public.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ClusterError

__all__ = [
    "LOOPBACK",
    "PORT_ATTEMPTS",
    "TAIL_CHARS",
    "Child",
    "check_address",
    "children_of",
    "connect_host",
    "free_port",
    "outward_address",
    "pid_alive",
    "port_taken",
    "tail",
    "url_host",
    "url_password",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

#: How many free ports to try when another process grabs ours between probe and bind.
PORT_ATTEMPTS = 5
TAIL_CHARS = 4000


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


# -- /proc readers and process groups ----------------------------------------------------------


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


def children_of(pid: int) -> list[int]:
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


# -- ports, logs and temp dirs -----------------------------------------------------------------


def check_address(address: str) -> str:
    """*address* as an IP literal (IPv6 unbracketed); :class:`ClusterError` if it is not one.

    Servers bind IP addresses, not names: a name could resolve to an address of another machine.
    """
    try:
        return str(ipaddress.ip_address(address.strip().strip("[]")))
    except ValueError:
        raise ClusterError(
            f"cannot listen on {address!r}: give an IP address of this machine (0.0.0.0 for all)"
        ) from None


def connect_host(address: str) -> str:
    """The address this machine reaches a server bound to *address* on (loopback for a wildcard)."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return "::1" if ip.version == 6 else LOOPBACK
    return address


def url_host(address: str) -> str:
    """*address* as the host part of a URL (IPv6 in brackets)."""
    return f"[{address}]" if ":" in address else address


def free_port(address: str = LOOPBACK) -> int:
    """A port nobody listens on at *address* right now (another process may still take it: we retry).

    Raises :class:`ClusterError` if *address* is not one of this machine's.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError as exc:
            raise ClusterError(
                f"cannot listen on {address}: {exc.strerror or exc} (is it an address of this machine?)"
            ) from None
        port: int = s.getsockname()[1]
        return port


def outward_address() -> str:
    """This machine's address on its default route: what another machine most likely reaches.

    A UDP ``connect`` sends nothing; it only asks the kernel which source address it would use.
    Falls back to the host name.
    """
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere, only looked up
        address: str = s.getsockname()[0]
        if not ipaddress.ip_address(address).is_unspecified:
            return address
    return socket.gethostname()


def port_taken(text: str) -> bool:
    """Whether a child's log says it lost the race for its port (so a retry may succeed)."""
    return "Address already in use" in text or "EADDRINUSE" in text


def tail(path: Path | None, limit: int = TAIL_CHARS) -> str:
    """The end of a log file, for error messages; ``""`` if there is none."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def url_password(url: str) -> str | None:
    """The password in a Redis URL, to cut out of a child's log before we show it."""
    return urlsplit(url).password


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


class Child:
    """A child process in its own session, dying with us, logging into a private temp dir.

    The base of the embedded Redis, the worker pool and Flower: they differ in what they
    start and how they tell it is ready, not in how it is started, logged and stopped.
    """

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

    def log_tail(self, limit: int = TAIL_CHARS) -> str:
        """The end of the child's log, secrets removed, for error messages."""
        return self._redact(tail(self._log, limit))

    def _redact(self, text: str) -> str:
        return text

    def _error(self, message: str) -> ClusterError:
        end = self.log_tail().strip()
        return ClusterError(message + (f"\n--- end of its log ---\n{end}" if end else ""))

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

    def stop(self, timeout: float | None = None, *, graceful: bool = True) -> None:
        """SIGTERM, then SIGKILL of the group after *timeout*; removes the temp dir.  Idempotent.

        ``graceful=False`` sends SIGKILL at once: for a child whose work nobody wants any more.
        """
        try:
            self._terminate(self.stop_timeout if timeout is None else timeout, graceful=graceful)
        finally:
            self._remove_dir()

    def kill(self) -> None:
        """SIGKILL the process and its group at once (for fault tests); the log is kept."""
        self._terminate(0, graceful=False)
