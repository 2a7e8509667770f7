"""The embedded cluster, with real processes: valkey-server, celery workers, Flower.

Most worker tests use a tiny Celery app of their own (``PROBE_APP`` below, one ``add``
task, json only) so they test the process management and nothing of tilechord's tasks;
the ones that need ``celery -A tilechord`` skip, saying why, when it cannot be loaded.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tilechord import Settings
from tilechord.errors import ClusterError
from tilechord.local import (
    EmbeddedRedis,
    LocalCluster,
    WorkerPool,
    pid_alive,
)

pytestmark = pytest.mark.timeout(90)

NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries even authentication errors, with backoff
SRC = Path(__file__).resolve().parent.parent / "src"
PROBE = "tilechord_cluster_probe"
PROBE_APP = f'''
import os
from celery import Celery

url = os.environ["TILECHORD_REDIS_URL"]
app = Celery("{PROBE}", broker=url, backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_default_queue="tilechord",
    broker_connection_retry_on_startup=True,
)


@app.task(name="probe.add")
def add(a, b):
    return a + b


@app.task(name="probe.env")
def env(name):
    return os.environ.get(name)
'''


def wait_gone(pids: Iterable[int | None], timeout: float = 5.0) -> list[int]:
    """The pids still alive after *timeout* (an empty list is what every test wants)."""
    deadline = time.monotonic() + timeout
    live = [p for p in pids if p is not None and pid_alive(p)]
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = [p for p in live if pid_alive(p)]
    return live


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a socket listening on *port*."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                address, hexport = fields[1].split(":")
                if fields[3] == "0A" and int(hexport, 16) == port:
                    found.add(address)
    return found


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [item.decode() for item in f.read().split(b"\0") if item]
    return dict(item.split("=", 1) for item in items)


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment making the probe app (and tilechord) importable by child processes."""
    directory = tmp_path_factory.mktemp("probe")
    (directory / f"{PROBE}.py").write_text(PROBE_APP)
    path = os.pathsep.join(p for p in (str(directory), str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    s = EmbeddedRedis()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def run_task(url: str, name: str, *args: Any) -> Any:
    from celery import Celery

    app = Celery("probe-client", broker=url, backend=url, set_as_current=False)
    app.conf.update(task_default_queue="tilechord", accept_content=["json"], result_accept_content=["json"])
    try:
        return app.send_task(name, args).get(timeout=20)
    finally:
        app.close()


@cache
def _tilechord_app_problem() -> str | None:
    code = "import tilechord; tilechord.app"
    env = {**os.environ, "TILECHORD_REDIS_URL": "redis://127.0.0.1:1/0", "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


@pytest.fixture
def tilechord_app() -> None:
    problem = _tilechord_app_problem()
    if problem is not None:
        pytest.skip(f"`celery -A tilechord` cannot load tilechord.app yet: {problem}")


# -- EmbeddedRedis -----------------------------------------------------------------------------


def test_redis_requires_its_password_and_listens_on_loopback_only(server: EmbeddedRedis) -> None:
    assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    assert len(server.password) >= 32
    assert server.password not in repr(server)
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    for password in (None, "wrong"):
        with (
            redis.Redis(host="127.0.0.1", port=server.port, password=password, retry=NO_RETRY) as client,
            pytest.raises(redis.AuthenticationError),
        ):
            client.ping()
    assert listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, no IPv6, no wildcard
    with open(f"/proc/{server.pid}/cmdline", "rb") as f:
        assert server.password.encode() not in f.read()  # visible to every local user otherwise


def test_redis_restart_keeps_port_and_password_and_forgets_everything(server: EmbeddedRedis) -> None:
    port, password, pid = server.port, server.password, server.pid
    with redis.Redis.from_url(server.url) as client:
        client.set("k", "v")
    server.restart()
    assert (server.port, server.password) == (port, password)
    assert server.pid != pid and wait_gone([pid]) == []
    with redis.Redis.from_url(server.url) as client:
        assert client.get("k") is None
        assert client.dbsize() == 0


def test_redis_kill_then_restart(server: EmbeddedRedis) -> None:
    pid = server.pid
    server.kill()
    assert not server.running and wait_gone([pid]) == []
    with (
        redis.Redis.from_url(server.url, socket_connect_timeout=1, retry=NO_RETRY) as client,
        pytest.raises(redis.ConnectionError),
    ):
        client.ping()
    server.restart()
    with redis.Redis.from_url(server.url) as client:
        assert client.ping()


def test_redis_stop_leaves_nothing_behind() -> None:
    server = EmbeddedRedis().start()
    pid, log = server.pid, server.log_path
    assert log is not None and log.parent.is_dir()
    assert oct(log.parent.stat().st_mode & 0o777) == "0o700"
    server.stop()
    assert wait_gone([pid], timeout=0) == []  # gone when stop() returns, not later
    assert not log.parent.exists()
    server.stop()  # idempotent


def test_redis_started_from_a_short_lived_thread_outlives_it() -> None:
    """The parent-death signal follows the forking *thread*: this must not kill Redis."""
    servers: list[EmbeddedRedis] = []
    thread = threading.Thread(target=lambda: servers.append(EmbeddedRedis().start()))
    thread.start()
    thread.join()
    server = servers[0]
    try:
        time.sleep(0.3)
        assert server.running
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    finally:
        server.stop()


def test_redis_fixed_port_in_use_fails_clearly() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ClusterError, match=f"could not bind 127.0.0.1:{port}"):
            EmbeddedRedis(port=port).start()


def test_redis_start_failure_carries_the_log_tail(tmp_path: Path) -> None:
    broken = tmp_path / "valkey-server"
    broken.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: bad directive' >&2\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(ClusterError, match="exited with code 3") as caught:
        EmbeddedRedis(binary=broken).start()
    assert "bad directive" in str(caught.value)


# -- WorkerPool --------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_pool_runs_tasks_survives_a_killed_child_and_stops_cleanly(
    server: EmbeddedRedis, probe_env: dict[str, str]
) -> None:
    pool = WorkerPool(server.url, concurrency=2, app=PROBE, env=probe_env)
    pool.start()
    try:
        pool.wait_ready(timeout=5)  # already ready: answers at once
        assert run_task(server.url, "probe.add", 2, 3) == 5
        assert run_task(server.url, "probe.env", "TILECHORD_REDIS_URL") == server.url
        children = pool.child_pids()
        assert len(children) == 2
        assert pool.pid is not None and pool.pid not in children

        os.kill(children[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = pool.child_pids()
            if len(now) == 2 and children[0] not in now:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the pool did not replace its killed child: {pool.child_pids()}")
        assert pool.running
        assert [run_task(server.url, "probe.add", i, i) for i in range(4)] == [0, 2, 4, 6]
        every = [pool.pid, *pool.child_pids()]
    finally:
        pool.stop()
    assert wait_gone(every, timeout=0) == []
    assert pool.log_path is None
    pool.stop()  # idempotent


def test_worker_pool_that_cannot_start_says_why(server: EmbeddedRedis, probe_env: dict[str, str]) -> None:
    pool = WorkerPool(server.url, app="no_such_module_for_tilechord", env=probe_env, startup_timeout=30)
    with pytest.raises(ClusterError, match="exited with code") as caught:
        pool.start()
    assert "no_such_module_for_tilechord" in str(caught.value)
    assert server.password not in str(caught.value)
    assert wait_gone([pool.pid], timeout=0) == []


def test_worker_pool_with_the_tilechord_app(server: EmbeddedRedis, tilechord_app: None) -> None:
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)}
    pool = WorkerPool(server.url, concurrency=1, env=env)
    pool.start()
    try:
        assert len(pool.child_pids()) == 1
        every = [pool.pid, *pool.child_pids()]
    finally:
        pool.stop()
    assert wait_gone(every, timeout=0) == []


ORPHAN_SCRIPT = """
import json, sys, threading, time
from tilechord.local import EmbeddedRedis, WorkerPool

started = {}

def start():  # from a thread that ends: the children must survive it, and die with us
    server = EmbeddedRedis().start()
    pool = WorkerPool(server.url, concurrency=2, app=sys.argv[1]).start()
    started.update(server=server, pool=pool)

thread = threading.Thread(target=start)
thread.start()
thread.join()
time.sleep(0.3)
server, pool = started["server"], started["pool"]
pids = [server.pid, pool.pid, *pool.child_pids()]
dirs = [str(server.log_path.parent), str(pool.log_path.parent)]
print(json.dumps({"pids": pids, "dirs": dirs, "running": server.running and pool.running}), flush=True)
time.sleep(120)
"""


def test_killing_the_parent_leaves_no_orphan(probe_env: dict[str, str]) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, PROBE],
        env={**os.environ, **probe_env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        report = json.loads(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    pids = report["pids"]
    assert report["running"] and len(pids) == 4
    assert wait_gone(pids, timeout=5) == [], "children outlived a SIGKILLed parent"
    # the temp dirs the dead parent could not remove go with the next process's first start
    assert all(os.path.isdir(d) for d in report["dirs"])
    sweep = "from tilechord.local import EmbeddedRedis; EmbeddedRedis().start().stop()"
    subprocess.run([sys.executable, "-c", sweep], env={**os.environ, **probe_env}, check=True, timeout=30)
    assert not any(os.path.exists(d) for d in report["dirs"])


# -- LocalCluster --------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_cluster_with_flower(probe_env: dict[str, str]) -> None:
    settings = Settings(workers=1, max_tiles=7, job_timeout=42.5, plugins=("a", "b"))
    with LocalCluster(settings, workers=2, flower=True, env=probe_env, app=PROBE) as cluster:
        assert cluster.settings.redis_url == cluster.url
        assert cluster.settings.max_tiles == 7
        assert cluster.url not in repr(cluster)
        assert cluster.pool is not None and cluster.redis is not None and cluster.flower is not None
        assert len(cluster.pool.child_pids()) == 2
        env = environ_of(cluster.pool.pid or 0)
        assert env["TILECHORD_REDIS_URL"] == cluster.url
        assert env["TILECHORD_MAX_TILES"] == "7"
        assert env["TILECHORD_JOB_TIMEOUT"] == "42.5"
        assert env["TILECHORD_PLUGINS"] == "a,b"
        assert env["TILECHORD_RESULT_URL"] == ""
        assert run_task(cluster.url, "probe.add", 20, 22) == 42
        assert cluster.flower_url is not None
        deadline = time.monotonic() + 20  # Flower inspects the workers in the background
        api = f"{cluster.flower_url}/api/workers?refresh=1"
        while True:
            with urllib.request.urlopen(api, timeout=10) as response:
                workers = json.load(response)
            if cluster.pool.nodename in workers or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert cluster.pool.nodename in workers
        every = [cluster.redis.pid, cluster.pool.pid, cluster.flower.pid, *cluster.pool.child_pids()]
    assert wait_gone(every, timeout=0) == []
    assert not cluster.running
    cluster.stop()  # idempotent
    with pytest.raises(ClusterError):
        _ = cluster.url
    unreferenced = weakref.ref(cluster)
    del cluster
    gc.collect()
    assert unreferenced() is None, "still registered with atexit after stop()"


def test_local_cluster_that_fails_to_start_cleans_up(probe_env: dict[str, str]) -> None:
    cluster = LocalCluster(Settings(workers=1), env=probe_env, app="no_such_module_for_tilechord")
    with pytest.raises(ClusterError):
        cluster.start()
    assert cluster.redis is not None
    assert wait_gone([cluster.redis.pid], timeout=0) == []
    assert not cluster.running
    cluster.stop()


CLUSTER_SCRIPT = """
import atexit, json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C reaches us whatever our parent ignores
from tilechord import Settings
from tilechord.local import LocalCluster, pid_alive, shared_cluster

mode, app = sys.argv[1], sys.argv[2]
pids = []

def report(cluster):
    pids.extend([cluster.redis.pid, cluster.pool.pid, *cluster.pool.child_pids()])
    print(json.dumps(pids), flush=True)

def survivors():  # registered first, so it runs after the cluster's own atexit handler
    print(json.dumps([p for p in pids if pid_alive(p)]), flush=True)

atexit.register(survivors)
if mode == "interrupt":  # Ctrl-C arrives while the cluster is in use
    with LocalCluster(Settings(workers=1), app=app) as cluster:
        report(cluster)
        time.sleep(120)
elif mode == "atexit":  # never stopped explicitly
    report(LocalCluster(Settings(workers=1), app=app).start())
elif mode == "shared":
    first = shared_cluster(Settings(workers=1, max_tiles=9))
    assert shared_cluster(Settings(workers=5)) is first
    assert first.settings.max_tiles == 9
    report(first)
"""


def run_cluster_script(mode: str, app: str, env: dict[str, str], interrupt: bool = False) -> list[int]:
    """Run *mode* in a fresh interpreter; return the cluster's pids, checking none survived."""
    child = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_SCRIPT, mode, app],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        if interrupt and line:
            child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert line, f"the script failed: {err}"
    pids: list[int] = json.loads(line)
    assert len(pids) == 3
    assert json.loads(out) == [], f"still running when the interpreter was exiting: {err}"
    if interrupt:
        assert "KeyboardInterrupt" in err
    else:
        assert child.returncode == 0, err
    return pids


def test_ctrl_c_stops_the_cluster(probe_env: dict[str, str]) -> None:
    pids = run_cluster_script("interrupt", PROBE, probe_env, interrupt=True)
    assert wait_gone(pids, timeout=0) == []  # stopped before the interpreter exited


@pytest.mark.slow
def test_a_cluster_left_running_is_stopped_at_exit(probe_env: dict[str, str]) -> None:
    pids = run_cluster_script("atexit", PROBE, probe_env)
    assert wait_gone(pids, timeout=0) == []


@pytest.mark.slow
def test_shared_cluster_is_started_once_and_stopped_at_exit(
    probe_env: dict[str, str], tilechord_app: None
) -> None:
    pids = run_cluster_script("shared", "tilechord", probe_env)
    assert wait_gone(pids, timeout=0) == []
