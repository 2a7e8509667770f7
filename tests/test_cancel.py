"""Cancelling a job stops its work: the workers are free for the next job at once.

Real workers (two pool processes, the session's) and a job whose two tiles each take
several seconds of Pillow; the next job's short timeout is what proves the tiles were
stopped, not finished.
"""

from __future__ import annotations

import pytest
from celery.result import AsyncResult
from images import encoded, photo
from PIL import ImageOps
from procs import wait_for

from tilechord import Client, JobCancelled, TilechordError
from tilechord.worker.keys import JobKeys

SLOW = ["median:size=15"]  # about 10 s a tile at 1600x1200 on 2x1 on this kind of machine
NEXT_JOB_TIMEOUT = 5.0  # well under a slow tile's time: met only if the tiles were stopped


def _both_tiles_running(client: Client, keys: JobKeys) -> bool:
    states = [AsyncResult(keys.task_id("edit", i), app=client.app).state for i in range(2)]
    return states == ["STARTED", "STARTED"]


def _small_job_is_served(client: Client) -> None:
    image = photo(64, 48)
    result = client.process_image(image, ["invert"], grid=(1, 1), timeout=NEXT_JOB_TIMEOUT)
    assert result.tobytes() == ImageOps.invert(image).tobytes()


@pytest.mark.slow
@pytest.mark.usefixtures("no_leftovers")
def test_cancel_stops_running_tiles_and_frees_the_workers(client: Client) -> None:
    job = client.submit(encoded(photo(1600, 1200), "PNG"), SLOW, grid=(2, 1))
    assert wait_for(lambda: _both_tiles_running(client, job.keys), timeout=30)
    job.cancel()
    with pytest.raises(JobCancelled, match="cancelled"):
        job.get()
    assert isinstance(JobCancelled("x"), TilechordError)
    _small_job_is_served(client)
    states = {AsyncResult(job.keys.task_id("edit", i), app=client.app).state for i in range(2)}
    assert states == {"REVOKED"}, states


def _running_edits(client: Client) -> int:
    jobs = [k.decode().split(":")[1] for k in client.store.client.scan_iter(match="tilechord:*:live")]
    ids = [JobKeys(job).task_id("edit", i) for job in jobs for i in range(2)]
    return sum(AsyncResult(task, app=client.app).state == "STARTED" for task in ids)


@pytest.mark.slow
@pytest.mark.usefixtures("no_leftovers")
def test_closing_map_early_stops_its_running_jobs(client: Client) -> None:
    small = photo(64, 48)
    sources = [encoded(small, "PNG"), *(encoded(photo(1600, 1200, seed=n), "PNG") for n in range(2))]
    # grid "auto": the small image is one tile, done in its split, the first task queued;
    # each slow one is cut in two strips, one per worker process.
    results = client.map(sources, SLOW, grid="auto", jobs=3, batch=1)
    first = next(results)
    assert first.index == 0 and first.ok and first.tiles == 1
    assert wait_for(lambda: _running_edits(client) == 2, timeout=30)
    results.close()
    _small_job_is_served(client)
