"""A big TIFF or PNG edited into a TIFF goes through Redis as a window of tiles, never whole.

Real workers, a real Redis: the client sends a skeleton, then each tile's piece (a TIFF's
segments, a PNG's pixels decoded from the top) at most
``window`` tiles ahead of the tiles it has taken back (:mod:`tilechord.worker.window`).
Redis's keyspace notifications count the pieces present at every moment; the result must
equal Pillow's on the whole image; a worker's machine killed mid-job costs a lease, not a
tile; a client that dies mid-job has its job dropped; and nothing is left in Redis.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from bigimages import write_png, write_tiled_tiff
from PIL import Image
from procs import wait_for
from reference import reference
from workers import own_cluster, tilechord_keys

from tilechord import Client, ImageTooLarge, InvalidImage, Settings
from tilechord.local import EmbeddedRedis, WorkerPool
from tilechord.worker.keys import JobKeys
from tilechord.worker.window import FEEDER_TTL

pytestmark = [pytest.mark.slow]

OPS = ["gaussian_blur:radius=4"]
SIZE = (8192, 7680)  # 63 MP: over the 48 MP above which a TIFF out streams; 3 x 3 tiles of 48 MB
WINDOW = 2
Cluster = tuple[EmbeddedRedis, list[WorkerPool], Client]


class KeyEvents:
    """The order of Redis's keyspace events on ``tilechord:*`` keys: (key, event)."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.events: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._saved = str(self.redis.config_get("notify-keyspace-events")["notify-keyspace-events"])
        self.redis.config_set("notify-keyspace-events", "K$lg")
        self._pubsub = self.redis.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe("__keyspace@*__:tilechord:*")
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                key = message["channel"].decode().split(":", 1)[1]  # tilechord:<job>:<kind>[:...]
                self.events.append((key, message["data"].decode()))

    def of(self, kind: str, event: str) -> list[tuple[int, str]]:
        """(position, key) of each *event* on a key of *kind* (``tile``, ``runs`` ...), chunks aside."""
        return [
            (n, key)
            for n, (key, seen) in enumerate(self.events)
            if seen == event and key.split(":")[2:3] == [kind] and ":chunk:" not in key
        ]

    def most_present(self, kind: str) -> int:
        """The most keys of *kind* that existed at once, from their sets and deletions."""
        present: set[str] = set()
        most = 0
        for key, event in self.events:
            if key.split(":")[2:3] == [kind] and ":chunk:" not in key:
                if event == "set":
                    present.add(key)
                elif event in ("del", "expired"):
                    present.discard(key)
                most = max(most, len(present))
        return most

    def close(self) -> None:
        time.sleep(0.3)  # the last events' notices
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        self.redis.config_set("notify-keyspace-events", self._saved)
        self.redis.close()


def _seeded(
    factory: pytest.TempPathFactory, name: str, write: Callable[..., None], seed: int
) -> tuple[Path, Image.Image]:
    """A seeded image file written by *write*, and Pillow's result on the whole of it."""
    path = factory.mktemp("window") / name
    write(path, *SIZE, seed=seed)
    with Image.open(path) as source:
        return path, reference(source, OPS)


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Image.Image]:
    """The seeded tiled BigTIFF, and Pillow's result on the whole of it."""
    return _seeded(tmp_path_factory, "in.tif", write_tiled_tiff, seed=5)


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Image.Image]:
    """The seeded PNG, and Pillow's result on the whole of it."""
    return _seeded(tmp_path_factory, "in.png", write_png, seed=6)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A Redis and two one-process workers of this test's own, and a client with a window of 2."""
    with own_cluster(2, job_timeout=180, window=WINDOW) as parts:
        yield parts


@contextlib.contextmanager
def own_client(server: EmbeddedRedis, **settings: Any) -> Iterator[Client]:
    """A client of the test's cluster with settings of its own (a window, a byte limit)."""
    client = Client(Settings(redis_url=server.url, job_timeout=180, **settings))
    try:
        yield client
    finally:
        client.close()


def run(client: Client, source: Path, out: Path) -> tuple[int, int]:
    """The job through ``Job.save`` into *out*: (tiles, the most tiles the client had out at once)."""
    job = client.submit(source, OPS, format="TIFF")
    assert job._window is not None, "a big TIFF or PNG into a TIFF is sent through a window"
    with out.open("wb") as fh:
        job.save(fh)
    return job.tiles, job._window.most_in_flight


def assert_equals(out: Path, expected: Image.Image) -> None:
    with Image.open(out) as got:
        assert (got.mode, got.size) == (expected.mode, expected.size)
        assert np.array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["tiled TIFF", "PNG"])
def test_redis_holds_at_most_the_window_of_pieces_and_the_result_equals_pillow(
    cluster: Cluster, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server, _, client = cluster
    big_tiff = request.getfixturevalue("big_tiff" if kind == "tiled TIFF" else "big_png")
    events = KeyEvents(server.url)
    try:
        tiles, out_at_once = run(client, big_tiff[0], tmp_path / "out.tif")
    finally:
        events.close()
    assert tiles == 9
    assert len({key for _, key in events.of("tile", "set")}) == tiles, "every tile had a piece of its own"
    most = events.most_present("tile")
    assert 1 <= most <= WINDOW, f"{most} pieces in Redis at once, window {WINDOW}"
    assert out_at_once <= WINDOW
    assert_equals(tmp_path / "out.tif", big_tiff[1])
    with redis.Redis.from_url(server.url) as r:
        assert not tilechord_keys(r)


@pytest.mark.timeout(300)
def test_a_worker_machine_killed_mid_job_costs_a_lease_and_the_result_still_equals_pillow(
    cluster: Cluster,
    big_tiff: tuple[Path, Image.Image],
    tmp_path: Path,
) -> None:
    server, pools, client = cluster
    job = client.submit(big_tiff[0], OPS)
    store = client.store
    assert wait_for(lambda: len(store.runs(job.keys)) >= 2, 60), "two edits never started"
    victim = next(p for p in pools if p.nodename == store.runs(job.keys)[-1]["host"])
    assert victim.pid is not None
    os.killpg(victim.pid, signal.SIGKILL)  # the whole machine: main process and pool child
    with (tmp_path / "out.tif").open("wb") as fh:
        job.save(fh, timeout=120)
    assert_equals(tmp_path / "out.tif", big_tiff[1])
    with redis.Redis.from_url(server.url) as r:
        assert not tilechord_keys(r)


CLIENT = """
import sys, time
from tilechord import Client, ImageTooLarge, InvalidImage, Settings
client = Client(Settings(redis_url=sys.argv[1], window=1, job_timeout=300))
job = client.submit(sys.argv[2], ["gaussian_blur:radius=4"])
print(job.id, flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(300)
def test_a_client_that_dies_mid_job_has_its_job_dropped_and_the_workers_serve_the_next(
    cluster: Cluster, big_tiff: tuple[Path, Image.Image], tmp_path: Path
) -> None:
    server, _, client = cluster
    proc = subprocess.Popen(
        [sys.executable, "-c", CLIENT, server.url, str(big_tiff[0])], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        keys = JobKeys(proc.stdout.readline().decode().strip())
        assert wait_for(lambda: len(client.store.runs(keys)) >= 1, 60), "no edit started"
    finally:
        proc.kill()  # mid-job: its window sent one piece, the other tiles wait for theirs
        proc.wait()
    with redis.Redis.from_url(server.url) as r:
        assert r.exists(keys.live), "the job outlived its client for a moment"
        pattern = f"tilechord:{keys.job_id}:*"
        gone = wait_for(lambda: not list(r.scan_iter(match=pattern)), FEEDER_TTL + 30)
        assert gone, sorted(r.scan_iter(match=pattern))
    run(client, big_tiff[0], tmp_path / "out.tif")  # the workers are free for the next job
    assert_equals(tmp_path / "out.tif", big_tiff[1])


@pytest.mark.timeout(300)
def test_a_file_over_the_byte_limit_goes_through_a_window_but_is_refused_where_it_would_be_stored_whole(
    cluster: Cluster, big_tiff: tuple[Path, Image.Image], tmp_path: Path
) -> None:
    server, _, _ = cluster
    size = big_tiff[0].stat().st_size
    with own_client(server, window=WINDOW, max_bytes=size // 4) as small:
        run(small, big_tiff[0], tmp_path / "out.tif")  # never whole in Redis: the limit is not for it
        assert_equals(tmp_path / "out.tif", big_tiff[1])
        with redis.Redis.from_url(server.url) as r:
            for options in ({"format": "PNG"}, {"ops": ["equalize"]}):  # decoded whole, or a global step
                with pytest.raises(ImageTooLarge, match="TILECHORD_MAX_BYTES"):
                    small.submit(big_tiff[0], options.get("ops", OPS), format=options.get("format"))
                assert not tilechord_keys(r), "refused before anything was stored"


@pytest.mark.timeout(300)
def test_a_source_deleted_once_submitted_still_gives_the_result_and_one_changed_gives_a_clear_error(
    cluster: Cluster, big_tiff: tuple[Path, Image.Image], tmp_path: Path
) -> None:
    server, _, _ = cluster
    with own_client(server, window=1) as one:
        copy = tmp_path / "copy.tif"
        shutil.copyfile(big_tiff[0], copy)
        job = one.submit(copy, OPS)
        copy.unlink()  # opened when sent: the rest of it is still read
        with (tmp_path / "out.tif").open("wb") as fh:
            job.save(fh)
        assert_equals(tmp_path / "out.tif", big_tiff[1])

        shutil.copyfile(big_tiff[0], copy)
        job = one.submit(copy, OPS)
        with copy.open("ab") as fh:  # changed in place while its pieces go
            fh.write(b"more")
        with pytest.raises(InvalidImage, match="changed while it was being sent"):
            job.save(io.BytesIO())
        with redis.Redis.from_url(server.url) as r:
            assert wait_for(lambda: not tilechord_keys(r), 10), tilechord_keys(r)


@pytest.mark.timeout(300)
def test_a_pngs_edits_start_while_its_split_still_decodes_and_the_result_equals_pillow(
    cluster: Cluster, big_png: tuple[Path, Image.Image], tmp_path: Path
) -> None:
    server, _, client = cluster
    events = KeyEvents(server.url)
    try:
        result = client.process(big_png[0], OPS, format="PNG", grid=(3, 3))  # no window: a PNG out
    finally:
        events.close()
    with Image.open(io.BytesIO(result)) as got:
        assert np.array_equal(np.asarray(got), np.asarray(big_png[1]))
    stored, started = events.of("tile", "set"), events.of("runs", "rpush")
    assert len({key for _, key in stored}) == len(stored) == 9, stored  # each tile stored once, by the split
    assert started and started[0][0] < stored[-1][0], "an edit started before the split stored the last tile"
    merged = events.of("result", "set")[0][0]  # the merge's result, before the client's cleanup
    dropped = {key for n, key in events.of("tile", "del") if n < merged}
    assert dropped == {key for _, key in stored}, "each edit dropped its input before the merge"
    with redis.Redis.from_url(server.url) as r:
        assert not tilechord_keys(r)
