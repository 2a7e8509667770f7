"""Faults done for real: a SIGKILLed worker process, a task that raises, a job that times out."""

from __future__ import annotations

import io
import os
import signal
import time

import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from PIL import Image, ImageFilter

import tilechord
from tilechord import Client
from tilechord.cluster import WorkerPool
from tilechord.keys import JobKeys


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.mark.slow
def test_job_completes_with_right_pixels_when_a_worker_process_is_killed_mid_tile(
    client: Client, worker: WorkerPool, no_leftovers: None
) -> None:
    image = photo(120, 80, seed=8)
    job = client.submit(encoded(image, "PNG"), ["test_slow:seconds=3", "gaussian_blur:radius=2"], grid=(2, 1))
    keys = JobKeys(job.id)
    edits = [AsyncResult(keys.task_id("edit", i), app=client.app) for i in range(2)]
    assert wait_for(lambda: any(r.state == "STARTED" for r in edits), timeout=30), "no tile started"
    running = next(r for r in edits if r.state == "STARTED")
    pid = running.info.get("pid") if isinstance(running.info, dict) else None
    assert pid in worker.child_pids(), (pid, worker.child_pids())
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    data = job.get(timeout=90)
    assert time.monotonic() - started < 90
    assert Image.open(io.BytesIO(data)).tobytes() == image.filter(ImageFilter.GaussianBlur(2)).tobytes()
    # the pool replaced its child and still serves the next job
    assert wait_for(lambda: len(worker.child_pids()) == 2, timeout=30)
    again = client.process_image(image, ["invert"])
    assert again.size == image.size


def test_a_task_that_raises_fails_the_job_fast_naming_tile_and_cause(
    client: Client, redis_client: redis.Redis, no_leftovers: None
) -> None:
    image = photo(90, 30, seed=1)
    # Tiles of a 3x1 grid are 30 px wide; every one raises.
    with pytest.raises(tilechord.JobFailed) as caught:
        client.process(encoded(image, "PNG"), ["test_explode:below=1000"], grid=(3, 1), timeout=60)
    message = str(caught.value)
    assert "tile" in message and "/3" in message
    assert "RuntimeError" in message and "boom on a 30-pixel-wide tile" in message
    # the workers still serve the next job
    assert client.process_image(image, ["invert"]).size == image.size


def test_a_damaged_file_gives_invalid_image_and_leaves_nothing(client: Client, no_leftovers: None) -> None:
    good = encoded(photo(200, 100, seed=2), "PNG")
    truncated = good[: len(good) // 2]
    with pytest.raises(tilechord.InvalidImage):
        client.process(truncated, ["invert"], timeout=60)
    assert client.process_image(photo(10, 10), ["invert"]).size == (10, 10)


def test_a_job_with_no_worker_times_out_cleanly(
    settings: tilechord.Settings, redis_client: redis.Redis
) -> None:
    # A client on another database of the same server: no worker listens there.
    url = settings.redis_url
    assert url is not None
    lonely = Client(settings.with_redis(url.rsplit("/", 1)[0] + "/9"))
    try:
        job = lonely.submit(encoded(photo(20, 20), "PNG"), ["invert"])
        with pytest.raises(tilechord.JobTimeout, match="no worker"):
            job.get(timeout=1.5)
        other = redis.Redis.from_url(url.rsplit("/", 1)[0] + "/9")
        assert list(other.scan_iter(match="tilechord:*")) == []
        other.flushdb()
    finally:
        lonely.close()
