"""Issue #15 for real: worker hosts in network namespaces of their own, and the machines' faults.

Redis and three worker hosts (``tests/support/hosts.py``), the client in the root namespace.
A host is killed (SIGKILL of its whole process group), frozen (SIGSTOP), or cut off (every
packet on its link dropped) while it holds a tile; another host must run that tile and the
job end with Pillow's pixels within the issue's bounds.  Who ran which task is read from
Celery's own events, never from anything tilechord writes.  Needs root (``ip netns``): the
module skips, saying why, elsewhere.
"""

from __future__ import annotations

import io
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from hosts import REDIS_PORT, Topology, WorkerHost, in_ns, why_no_namespaces
from hosts_plugin import HOSTS_PLUGINS
from images import encoded, photo
from PIL import Image
from procs import wait_for
from reference import reference
from taskevents import TaskEvent, TaskEvents
from workers import tilechord_keys

import tilechord
from tilechord import Client, Settings

pytestmark = pytest.mark.slow

#: The workers' lease (TILECHORD_LEASE), at its default: the tests run what users run.
LEASE = 10.0
#: Two tiles of about 8 s each, as the issue measures them.
SLOW = ["host_sleep:seconds=8", "gaussian_blur:radius=2"]


def expected(image: Image.Image, ops: list[str]) -> bytes:
    """Pillow's pixels for *ops* (the sleeps are the identity)."""
    return reference(image, [op for op in ops if not op.startswith("host_sleep")]).tobytes()


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).tobytes()


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    why = why_no_namespaces()
    if why is not None:
        pytest.skip(why)
    topo = Topology(tmp_path_factory.mktemp("hosts"), workers=3).up()
    try:
        yield topo
    finally:
        topo.down()
        left = topo.leftovers()
        assert not left, f"namespaces or links left behind: {left}"


@pytest.fixture(scope="module")
def events(topology: Topology) -> Iterator[TaskEvents]:
    recorder = TaskEvents(topology.client_url).start()
    try:
        yield recorder
    finally:
        recorder.stop()


@pytest.fixture(scope="module")
def host_client(topology: Topology) -> Iterator[Client]:
    settings = Settings(redis_url=topology.client_url, key_ttl=900, job_timeout=120, workers=3,
                        plugins=HOSTS_PLUGINS)  # fmt: skip
    client = Client(settings)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def hosts(topology: Topology) -> Iterator[Topology]:
    """The topology with every host healthy and idle, and no job key in Redis, before the test."""
    topology.reset()
    assert topology.wait_idle(topology.hosts, timeout=60), topology.logs()
    left = keys_of(topology)
    if left:  # an earlier test failed with a job in flight: its own assertion said so; start clean
        r = redis.Redis.from_url(topology.client_url, socket_timeout=5)
        r.delete(*left)
        r.close()
    yield topology


def keys_of(topology: Topology) -> list[bytes]:
    r = redis.Redis.from_url(topology.client_url, socket_timeout=5)
    try:
        return tilechord_keys(r)
    finally:
        r.close()


def host_named(topology: Topology, name: str) -> WorkerHost:
    return next(h for h in topology.hosts if h.nodename == name)


def first_tile(events: TaskEvents, job: tilechord.Job) -> TaskEvent:
    started = events.wait(f"{job.id}-edit-", timeout=30)
    assert started is not None, "no tile of the job started within 30 s"
    return started


def get_within(job: tilechord.Job, bound: float, topology: Topology) -> tuple[bytes, float]:
    """The job's result and the seconds it took, failing with every host's log if it errs."""
    started = time.monotonic()
    try:
        data = job.get(timeout=bound)
    except tilechord.TilechordError as exc:
        took = time.monotonic() - started
        pytest.fail(f"{type(exc).__name__} after {took:.1f} s: {exc}\n{topology.logs()}")
    return data, time.monotonic() - started


# -- the topology itself ----------------------------------------------------------------------


def reaches(host: WorkerHost | None, address: str) -> bool:
    """Whether a TCP connection from *host*'s namespace (None: the root) to Redis's port at *address*
    opens within a second."""
    code = f"import socket; socket.create_connection(({address!r}, {REDIS_PORT}), timeout=1).close()"
    ns = None if host is None else host.ns
    done = subprocess.run(in_ns(ns, sys.executable, "-c", code), capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.mark.timeout(180)
def test_each_host_is_a_namespace_of_its_own_reaching_redis_only_over_its_own_link(hosts: Topology) -> None:
    one, two, _ = hosts.hosts
    assert reaches(None, hosts.client_link.redis_addr)
    assert reaches(one, one.link.redis_addr)
    # nothing routes between the links: a host reaches neither the client nor another host
    assert not reaches(one, hosts.client_link.host_addr)
    assert not reaches(one, two.link.host_addr)
    namespaces = {os.readlink("/proc/self/ns/net")}
    for host in hosts.hosts:
        assert host.proc is not None
        pid = host.proc.pid
        proc = Path(f"/proc/{pid}")
        assert b"celery" in (proc / "cmdline").read_bytes()  # the worker itself, not a wrapper
        namespaces.add(os.readlink(f"/proc/{pid}/ns/net"))
        assert os.readlink(f"/proc/{pid}/cwd") == str(host.directory)
        environ = (proc / "environ").read_bytes().split(b"\0")
        assert f"TMPDIR={host.directory / 'tmp'}".encode() in environ
        assert os.getpgid(pid) == pid  # a process group of its own: the machine
    assert len(namespaces) == 1 + len(hosts.hosts)
    one.cut()
    try:
        assert not reaches(one, one.link.redis_addr)  # every packet dropped
        assert reaches(two, two.link.redis_addr)  # and only on that link
    finally:
        one.heal()
    assert reaches(one, one.link.redis_addr)


@pytest.mark.timeout(240)
def test_a_job_runs_its_tiles_on_several_hosts_and_equals_pillow(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    image = photo(240, 160, seed=3)
    ops = ["host_sleep:seconds=1", "median:size=3", "gaussian_blur:radius=2"]
    job = host_client.submit(encoded(image, "PNG"), ops, grid=(3, 1))
    data, took = get_within(job, 60, hosts)
    assert pixels(data) == expected(image, ops)
    assert wait_for(lambda: len(events.of(f"{job.id}-edit-")) >= 3, timeout=5)
    ran = events.hosts(f"{job.id}-edit-")
    print(f"3 tiles in {took:.1f} s on {sorted(ran)}")
    assert len(ran) >= 2, ran
    assert ran <= {h.nodename for h in hosts.hosts}


# -- a host lost while it holds a tile -------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_host_killed_mid_tile_costs_seconds_not_the_job(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    image = photo(200, 100, seed=21)
    job = host_client.submit(encoded(image, "PNG"), SLOW, grid=(2, 1))
    tile = first_tile(events, job)
    victim = host_named(hosts, tile.host)
    victim.kill()
    killed = time.monotonic()
    data, took = get_within(job, 30, hosts)
    assert pixels(data) == expected(image, SLOW)
    again = events.wait(tile.task_id, timeout=0, where=lambda e: e.host != victim.nodename)
    assert again is not None, f"{tile.task_id} never started on another host"
    print(f"kill -> result in {took:.1f} s; the tile started again on {again.host} {again.at - killed:.1f} s "
          "after the kill")  # fmt: skip
    assert not keys_of(hosts)


def lose_for_a_minute(hosts: Topology, events: TaskEvents, client: Client, fault: str) -> WorkerHost:
    """Freeze or cut the host running a tile for 60 s; the job must end right within 30 s of the fault."""
    image = photo(200, 100, seed=22)
    job = client.submit(encoded(image, "PNG"), SLOW, grid=(2, 1))
    tile = first_tile(events, job)
    victim = host_named(hosts, tile.host)
    victim.freeze() if fault == "freeze" else victim.cut()
    hit = time.monotonic()
    data, took = get_within(job, 30, hosts)
    assert pixels(data) == expected(image, SLOW)
    again = events.wait(tile.task_id, timeout=0, where=lambda e: e.host != victim.nodename)
    assert again is not None, f"{tile.task_id} never started on another host"
    print(f"{fault} -> result in {took:.1f} s; started again on {again.host} {again.at - hit:.1f} s after")
    time.sleep(max(0.0, hit + 60 - time.monotonic()))
    victim.thaw() if fault == "freeze" else victim.heal()
    back = time.monotonic()
    # the stale tile finishes on the revived host, or is dropped: either way it leaves nothing
    assert hosts.wait_idle([victim], timeout=60), f"{victim.nodename} never idle again\n{victim.log_tail()}"
    print(f"{victim.nodename} answers and is idle {time.monotonic() - back:.1f} s after the {fault} ended")
    assert not keys_of(hosts), f"keys left once {victim.nodename} was idle: {keys_of(hosts)[:10]}"
    return victim


def serves(hosts: Topology, events: TaskEvents, client: Client, host: WorkerHost, tries: int = 6) -> int:
    """Run right jobs until one has a task started on *host*; how many it took."""
    image = photo(180, 60, seed=23)
    ops = ["host_sleep:seconds=1", "invert"]
    for attempt in range(1, tries + 1):
        job = client.submit(encoded(image, "PNG"), ops, grid=(3, 1))
        data, _ = get_within(job, 30, hosts)
        assert pixels(data) == expected(image, ops)
        if wait_for(lambda: host.nodename in events.hosts(job.id), timeout=2):  # noqa: B023 - called here
            return attempt
    pytest.fail(f"{host.nodename} ran none of {tries} jobs\n{host.log_tail()}")


@pytest.mark.timeout(300)
def test_a_host_frozen_for_a_minute_mid_tile_costs_seconds_and_corrupts_nothing(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    victim = lose_for_a_minute(hosts, events, host_client, "freeze")
    print(f"{victim.nodename} served again after {serves(hosts, events, host_client, victim)} job(s)")
    assert not keys_of(hosts)


@pytest.mark.timeout(300)
def test_a_host_cut_off_for_a_minute_mid_tile_costs_seconds_and_serves_again_once_back(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    victim = lose_for_a_minute(hosts, events, host_client, "cut")
    print(f"{victim.nodename} served again after {serves(hosts, events, host_client, victim)} job(s)")
    assert not keys_of(hosts)


@pytest.mark.timeout(240)
def test_a_host_cut_off_for_good_mid_tile_costs_seconds_and_the_others_serve_on(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    image = photo(200, 100, seed=24)
    job = host_client.submit(encoded(image, "PNG"), SLOW, grid=(2, 1))
    victim = host_named(hosts, first_tile(events, job).host)
    victim.cut()
    data, took = get_within(job, 30, hosts)
    assert pixels(data) == expected(image, SLOW)
    print(f"cut for good -> result in {took:.1f} s")
    ops = ["host_sleep:seconds=1", "invert"]
    for n in range(3):  # the host stays cut: the two others serve every job
        job = host_client.submit(encoded(image, "PNG"), ops, grid=(2, 1))
        data, took = get_within(job, LEASE + 20, hosts)
        assert pixels(data) == expected(image, ops)
        assert victim.nodename not in events.hosts(job.id)
        print(f"job {n + 1} with the host still cut: {took:.1f} s")
    assert not keys_of(hosts)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["cut", "freeze"])
def test_a_host_lost_while_it_waits_for_work_loses_no_job(
    hosts: Topology, events: TaskEvents, host_client: Client, fault: str
) -> None:
    """Redis hands the next message to a waiting worker's BRPOP even when that worker is gone.

    Two hosts are kept busy, so the third is the only one waiting; it is cut off (or frozen),
    and a job sent at once.  Its message leaves the queue for a host that never reads it:
    unless something gives it back, the job never starts.
    """
    image = photo(200, 100, seed=28)
    busy = host_client.submit(encoded(image, "PNG"), ["host_sleep:seconds=6", "invert"], grid=(2, 1))
    assert wait_for(lambda: len(events.hosts(f"{busy.id}-edit-")) == 2, timeout=30)
    working = events.hosts(f"{busy.id}-edit-")
    idle = next(h for h in hosts.hosts if h.nodename not in working)
    idle.cut() if fault == "cut" else idle.freeze()
    cut = time.monotonic()
    job = host_client.submit(encoded(image, "PNG"), ["invert"], grid=(1, 1))
    data, _ = get_within(busy, 30, hosts)  # first: whatever becomes of the other, this one leaves no key
    assert pixels(data) == expected(image, ["invert"])
    data, _ = get_within(job, LEASE + 20 + 6 - (time.monotonic() - cut), hosts)
    took = time.monotonic() - cut
    print(f"a job sent as an idle host is lost ({fault}): {took:.1f} s (on {sorted(events.hosts(job.id))})")
    assert pixels(data) == expected(image, ["invert"])
    assert not keys_of(hosts)


# -- a long tile on healthy hosts ------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_a_tile_longer_than_the_lease_on_healthy_hosts_runs_exactly_once(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    image = photo(200, 100, seed=25)
    ops = ["host_sleep:seconds=40", "invert"]
    job = host_client.submit(encoded(image, "PNG"), ops, grid=(2, 1))
    data, took = get_within(job, 40 + 30, hosts)
    assert pixels(data) == expected(image, ops)
    assert wait_for(lambda: bool(events.of(job.id, "task-succeeded")), timeout=5)
    starts: dict[str, list[str]] = {}
    for event in events.of(job.id):
        starts.setdefault(event.task_id, []).append(event.host)
    print(f"40 s tiles: result in {took:.1f} s; starts {starts}")
    assert {f"{job.id}-edit-0", f"{job.id}-edit-1"} <= set(starts)
    assert all(len(where) == 1 for where in starts.values()), starts


# -- Redis restarted ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_redis_restart_mid_job_is_a_clear_error_within_seconds_and_the_next_job_runs(
    hosts: Topology, events: TaskEvents, host_client: Client
) -> None:
    image = photo(200, 100, seed=26)
    job = host_client.submit(encoded(image, "PNG"), ["host_sleep:seconds=6", "invert"], grid=(2, 1))
    first_tile(events, job)
    hosts.redis.kill()
    restarted = time.monotonic()
    hosts.redis.start(via=hosts.client_link.redis_addr)  # same port and password, every key gone
    back = time.monotonic()
    with pytest.raises(tilechord.TilechordError) as caught:
        job.get(timeout=30)
    error_after = time.monotonic() - restarted
    message = str(caught.value)
    print(f"Redis restart -> {type(caught.value).__name__} after {error_after:.1f} s: {message}")
    assert error_after <= 5, message
    assert re.search(r"redis", message, re.I) and re.search(r"lost|unreachable", message, re.I), message
    submitted = time.monotonic()
    after = host_client.submit(encoded(image, "PNG"), ["invert"], grid=(2, 1))
    data, _ = get_within(after, 5, hosts)
    done = time.monotonic()
    starts = [f"{e.task_id.removeprefix(after.id) or 'split'} on {e.host} at +{e.at - submitted:.1f} s"
              for e in events.of(after.id)]  # fmt: skip
    print(f"next job: {done - submitted:.1f} s from its submit, {done - back:.1f} s after Redis was back; "
          f"{starts}")  # fmt: skip
    assert pixels(data) == expected(image, ["invert"])
    assert done - submitted <= 5
    assert hosts.wait_idle(hosts.hosts, timeout=30), hosts.logs()
    assert not keys_of(hosts)


# -- chaos ---------------------------------------------------------------------------------------


class Chaos:
    """A bounded loop of faults done to random hosts, always leaving at least one healthy."""

    FAULTS = ("kill", "freeze", "cut")

    def __init__(self, topology: Topology, rng: random.Random) -> None:
        self.topology, self.rng = topology, rng
        self.started = time.monotonic()
        self.until: dict[str, float] = {}  # host -> when its fault ends
        self.done: list[str] = []

    def note(self, text: str) -> None:
        self.done.append(f"{time.monotonic() - self.started:6.1f} s {text}")

    def step(self) -> None:
        now = time.monotonic()
        for host in self.topology.hosts:
            if host.nodename in self.until and now >= self.until[host.nodename]:
                self.recover(host)
        healthy = [h for h in self.topology.hosts if h.healthy]
        if len(healthy) >= 2 and self.rng.random() < 0.7:
            host, fault = self.rng.choice(healthy), self.rng.choice(self.FAULTS)
            getattr(host, fault)()
            self.until[host.nodename] = now + self.rng.uniform(3, 12)
            self.note(f"{fault} {host.nodename}")

    def recover(self, host: WorkerHost) -> None:
        del self.until[host.nodename]
        if not host.running:
            host.start()
            self.note(f"restart {host.nodename}")
        if host.frozen:
            host.thaw()
            self.note(f"thaw {host.nodename}")
        if host.is_cut:
            host.heal()
            self.note(f"heal {host.nodename}")

    def end(self) -> None:
        for host in self.topology.hosts:
            if host.nodename in self.until:
                self.recover(host)


@pytest.mark.timeout(480)
def test_chaos_every_job_right_and_in_bound_while_hosts_die_freeze_and_drop_off(
    hosts: Topology, host_client: Client
) -> None:
    seed = int(os.environ.get("TILECHORD_CHAOS_SEED") or time.time_ns() % 1_000_000)
    print(f"chaos seed {seed} (TILECHORD_CHAOS_SEED={seed} repeats it)")
    rng = random.Random(seed)
    ops = ["host_sleep:seconds=1", "invert"]
    own = 3.0  # the job's own time on a busy healthy host: split, two tiles of 1 s, merge
    # Faults come every few seconds here, so one job can lose its tasks twice in a row (a tile
    # to a cut host, then its re-run or the merge to the next fault): each loss costs a lease
    # and a second; a lost message the client's look (3 s, seen twice) on top.
    bound = 2 * LEASE + 20 + own
    images = [photo(64, 48, seed=i) for i in range(100)]

    def one(image: Image.Image) -> tuple[float, bytes | Exception]:
        started = time.monotonic()
        try:
            data = host_client.submit(encoded(image, "PNG"), ops, grid=(2, 1)).get(timeout=bound)
        except tilechord.TilechordError as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, data

    chaos = Chaos(hosts, rng)
    with ThreadPoolExecutor(4) as pool:
        futures: list[Future[tuple[float, bytes | Exception]]] = [pool.submit(one, im) for im in images]
        try:
            while not all(f.done() for f in futures) and time.monotonic() - chaos.started < 360:
                chaos.step()
                time.sleep(rng.uniform(1.5, 4))
        finally:
            chaos.end()
        outcomes = [f.result() for f in futures]
    story = "\n".join(chaos.done)
    wrong = [(i, took, out) for i, (took, out) in enumerate(outcomes)
             if isinstance(out, Exception) or pixels(out) != expected(images[i], ops)]  # fmt: skip
    slowest = max(took for took, _ in outcomes)
    print(f"{len(chaos.done)} faults and recoveries in {time.monotonic() - chaos.started:.0f} s; "
          f"slowest job {slowest:.1f} s (bound {bound:g} s); {len(wrong)} wrong\n{story}")  # fmt: skip
    assert not wrong, f"{wrong[:5]}\nseed {seed}\n{story}\n{hosts.logs()}"
    assert slowest <= bound + 1
    assert hosts.wait_idle(hosts.hosts, timeout=90), hosts.logs()
    assert not keys_of(hosts), f"keys left: {keys_of(hosts)[:10]} (seed {seed})"
