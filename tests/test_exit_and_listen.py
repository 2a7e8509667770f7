"""Issue #18 items 7, 9 and 10: prompt exits with the embedded cluster, and ``tilechord up --listen``.

Every test runs real processes: a script in a fresh interpreter with no
``TILECHORD_REDIS_URL`` (so the API starts its own embedded cluster), or ``tilechord up``
as a user starts it.  Wall times are asserted only as generous upper bounds proving that
nothing waits for work nobody wants.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from images import photo
from procs import processes_with, wait_until_gone
from reference import reference, same_image

from tilechord import BrokerUnavailable, Client, Settings
from tilechord.local import pid_alive

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; 127.0.0.2 is on lo"),
]

#: seconds a script may take to exit after its last line (the issue asks for 1 s; 5 allows a loaded machine)
EXIT_BOUND = 5.0
SLOW = "median:size=15"  # on 1600x1200 in two tiles: seconds of work per tile

# The script prints one JSON line (its cluster's pids) as its last act, then ends.
ABANDON = """
import json, sys, time
from celery.result import AsyncResult
import tilechord
from tilechord.local import shared_cluster

job = tilechord.submit(sys.argv[1], [sys.argv[2]], grid=(2, 1))
probe = tilechord.Client()  # the same embedded cluster: only to watch the job's tasks
tiles = [AsyncResult(job.keys.task_id("edit", i), app=probe.app) for i in range(2)]
deadline = time.monotonic() + 90
while not any(t.state == "STARTED" for t in tiles) and time.monotonic() < deadline:
    time.sleep(0.05)
cluster = shared_cluster()
states = [t.state for t in tiles]
print(json.dumps({"pids": [cluster.redis.pid, cluster.pool.pid, *cluster.pool.child_pids()],
                  "states": states}), flush=True)
"""

CLOSE_MAP = """
import json, sys
import tilechord
from tilechord.local import shared_cluster

sources = [sys.argv[1]] * 3 + [b"not an image"]  # the bad one ends first, with the big ones running
results = tilechord.map(sources, [sys.argv[2]], grid=(2, 1))
first = next(results)
results.close()
cluster = shared_cluster()
print(json.dumps({"pids": [cluster.redis.pid, cluster.pool.pid, *cluster.pool.child_pids()],
                  "first_ok": first.ok}), flush=True)
"""


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exit") / "big.png"
    photo(1600, 1200).save(path)
    return path


def _embedded_env(marker: str) -> dict[str, str]:
    """Our environment without a Redis URL (so the API embeds one), plus a marker to find children by."""
    env = {k: v for k, v in os.environ.items() if k != "TILECHORD_REDIS_URL"}
    return {**env, "TILECHORD_TEST_EXIT_MARKER": marker}


def _group_members(groups: set[int]) -> list[int]:
    """Live processes in any of the process groups *groups* (each cluster child leads its own)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in (b"Z", b"X") and int(fields[2]) in groups:
                found.append(int(entry))
    return found


def _run_script(script: str, big_png: Path) -> tuple[dict[str, object], float, str]:
    """Run *script*; its last line, the seconds from that line to its exit, and its stderr."""
    marker = uuid.uuid4().hex
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(big_png), SLOW],
        env=_embedded_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        printed = time.monotonic()
        _, err = child.communicate(timeout=60)
        exited = time.monotonic() - printed
    finally:
        child.kill()
        child.wait()
    assert line, f"the script failed: {err}"
    assert child.returncode == 0, err
    report: dict[str, object] = json.loads(line)
    pids = report["pids"]
    assert isinstance(pids, list) and len(pids) >= 3
    assert [p for p in pids if pid_alive(p)] == [], "a cluster process outlived the script"
    assert _group_members({pids[0], pids[1]}) == []
    assert processes_with(marker) == []
    return report, exited, err


def test_a_script_that_abandons_a_running_job_exits_at_once(big_png: Path) -> None:
    report, exited, err = _run_script(ABANDON, big_png)
    assert "STARTED" in report["states"], "the job's tiles were not running when the script ended"  # type: ignore[operator]
    assert exited < EXIT_BOUND, f"exited {exited:.1f}s after its last line: {err}"


def test_a_script_that_closes_map_early_exits_at_once(big_png: Path) -> None:
    report, exited, err = _run_script(CLOSE_MAP, big_png)
    assert report["first_ok"] is False
    assert exited < EXIT_BOUND, f"exited {exited:.1f}s after its last line: {err}"


# -- tilechord up --listen -----------------------------------------------------------------------


class Up:
    """A running ``tilechord up`` and what it printed."""

    def __init__(self, *args: str) -> None:
        self.marker = uuid.uuid4().hex
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tilechord", "up", "--no-flower", "--workers", "2", *args],
            env=_embedded_env(self.marker),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert self.lines and self.lines[-1].startswith("Ctrl-C"), self.proc.stderr.read()  # type: ignore[union-attr]
        export = "export TILECHORD_REDIS_URL="
        exports = [line.split("=", 1)[1].strip() for line in self.lines if export in line]
        assert len(exports) == 1, self.lines
        self.url = exports[0]
        self.pids = [int(word.strip(",)")) for line in self.lines for word in _after(line, "pid ")]

    def stop(self) -> tuple[float, str]:
        """SIGTERM; the seconds until it exited, and its stderr."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return time.monotonic() - sent, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _after(line: str, word: str) -> list[str]:
    """The word after each *word* in *line* (`pid 123` gives `123`)."""
    parts = line.split(word)[1:]
    return [part.split()[0] for part in parts if part.split()]


def _listening(port: int) -> set[str]:
    """Local IPv4 addresses (dotted) with a socket listening on *port*, from /proc/net/tcp."""
    found = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            address, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _up(*args: str) -> Iterator[Up]:
    up = Up(*args)
    try:
        yield up
    finally:
        up.kill()
        wait_until_gone(up.marker, timeout=15)


@pytest.fixture
def up_listen() -> Iterator[Up]:
    with socket.socket() as probe:  # a port free on 127.0.0.2, as a firewall rule would name it
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    yield from _up("--listen", "127.0.0.2", "--port", str(port))


@pytest.fixture
def up_default() -> Iterator[Up]:
    yield from _up()


def test_up_listen_binds_the_address_it_prints_and_runs_a_job(up_listen: Up) -> None:
    parts = urlsplit(up_listen.url)
    assert parts.hostname == "127.0.0.2" and parts.password
    assert parts.port is not None and ["--port", str(parts.port)] == up_listen.proc.args[-2:]  # type: ignore[index]
    assert _listening(parts.port) == {"127.0.0.2"}
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", parts.port), 2):
        pass
    image = photo(320, 240)
    ops = ["gaussian_blur:radius=3", "sharpen"]
    client = Client(Settings(redis_url=up_listen.url))
    try:
        assert same_image(client.process_image(image, ops, grid=(3, 2), timeout=120), reference(image, ops))
    finally:
        client.close()
    assert len(up_listen.pids) == 2 and all(pid_alive(p) for p in up_listen.pids)
    took, err = up_listen.stop()
    assert up_listen.proc.returncode == 0, err
    assert took < 15, f"tilechord up took {took:.1f}s to stop"
    assert "tilechord: stopped" in err
    assert wait_until_gone(up_listen.marker, timeout=5) == []
    assert [p for p in up_listen.pids if pid_alive(p)] == []


def test_up_stop_says_what_happens_to_a_running_job(up_default: Up, big_png: Path) -> None:
    """Item 10: stopping abandons jobs in flight, promptly, and says so (it said they finish)."""
    up = up_default
    assert urlsplit(up.url).hostname == "127.0.0.1"
    client = Client(Settings(redis_url=up.url))
    try:
        job = client.submit(big_png, [SLOW], grid=(2, 1))
        from celery.result import AsyncResult

        tiles = [AsyncResult(job.keys.task_id("edit", i), app=client.app) for i in range(2)]
        deadline = time.monotonic() + 90
        while not any(t.state == "STARTED" for t in tiles) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(t.state == "STARTED" for t in tiles)
        took, err = up.stop()
        with pytest.raises(BrokerUnavailable):
            job.get(timeout=60)
    finally:
        client.close()
    assert took < EXIT_BOUND, f"tilechord up took {took:.1f}s to stop with a job running: {err}"
    assert "abandoned" in err, err
    assert any("abandoned" in line for line in up.lines), up.lines
    assert wait_until_gone(up.marker, timeout=5) == []
    assert [p for p in up.pids if pid_alive(p)] == []
