"""Flower, for real: started against the session's Redis and workers, read over HTTP and in a browser.

Flower sees only the events the workers send (``worker_send_task_events``) and the client's
``task-sent`` events (``task_send_sent_event``), so these tests also prove that the
configuration turns them on.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from images import photo
from PIL import Image, ImageStat
from procs import wait_for
from workers import worker_env

from tilechord import Client, parse_pipeline
from tilechord.cli import FLOWER_ENV
from tilechord.local import Flower, WorkerPool

ROOT = Path(__file__).resolve().parent.parent
OPS = ["grayscale", "gaussian_blur:radius=3"]
PIPELINE = str(parse_pipeline(OPS))  # as the tasks show it, e.g. "grayscale | gaussian_blur:radius=3"


@pytest.fixture(scope="module")
def flower(redis_url: str, worker: WorkerPool) -> Iterator[Flower]:
    server = Flower(redis_url, env={**worker_env(redis_url), **FLOWER_ENV})
    server.start()
    try:
        yield server
    finally:
        server.stop()


def api(flower: Flower, path: str) -> Any:
    with urllib.request.urlopen(f"{flower.url}{path}", timeout=10) as response:
        return json.load(response)


def job_tasks(flower: Flower, job_id: str, expected: int, timeout: float = 60) -> dict[str, dict[str, Any]]:
    """The job's tasks as Flower lists them, once *expected* of them have succeeded there."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = api(flower, "/api/tasks?limit=1000")
        mine = {k: v for k, v in tasks.items() if str(v.get("args", "")).startswith(f"job {job_id}:")}
        if sum(t["state"] == "SUCCESS" for t in mine.values()) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(0.25)


@pytest.fixture(scope="module")
def finished_job(flower: Flower, client: Client) -> tuple[str, bytes]:
    """A 3x2 job run while Flower watches; its id and its result.

    Flower answers HTTP before its event receiver has subscribed; a job run in between
    loses its first events (the split's).  So first a small job, again until Flower has
    seen one end to end.
    """
    probe = io.BytesIO()
    photo(20, 20, seed=1).save(probe, "PNG")

    def flower_sees_a_job() -> bool:
        job = client.submit(probe.getvalue(), ["invert"], grid=(1, 1))
        job.get()
        return bool(job_tasks(flower, job.id, expected=1, timeout=5))

    assert wait_for(flower_sees_a_job, timeout=60), "Flower never received the workers' events"
    buffer = io.BytesIO()
    photo(360, 240, seed=8).save(buffer, "PNG")
    job = client.submit(buffer.getvalue(), OPS, grid=(3, 2))
    return job.id, job.get()


def test_flower_lists_every_edit_and_the_merge_succeeded_with_readable_args_and_short_results(
    flower: Flower, finished_job: tuple[str, bytes]
) -> None:
    job_id, _ = finished_job
    tasks = job_tasks(flower, job_id, expected=8)  # the split, six edits and the merge
    names = [t["name"] for t in tasks.values()]
    assert names.count("tilechord.edit") == 6 and names.count("tilechord.merge") == 1, names
    assert {t["state"] for t in tasks.values()} == {"SUCCESS"}
    edits = {uuid: t for uuid, t in tasks.items() if t["name"] == "tilechord.edit"}
    assert sorted(edits) == sorted(f"{job_id}-edit-{i}" for i in range(6))
    shape = rf"job {job_id}: tile ([1-6])/6 at \(\d+, \d+\) 120x120 \[{re.escape(PIPELINE)}\]"
    matches = [re.fullmatch(shape, t["args"]) for t in edits.values()]
    assert all(matches), [t["args"] for t in edits.values()]
    assert sorted(int(m.group(1)) for m in matches if m) == [1, 2, 3, 4, 5, 6]
    for task in tasks.values():
        for field in ("args", "kwargs", "result"):
            text = str(task.get(field))
            assert "b'" not in text and "\\x" not in text, (field, text)  # never bytes
            assert len(text) < 300, (field, text)
        assert task["worker"]
    merge = next(t for t in tasks.values() if t["name"] == "tilechord.merge")
    assert "360x240 PNG" in merge["args"] and "'bytes'" in merge["result"]


def test_flower_lists_the_split_beside_the_merge(flower: Flower, finished_job: tuple[str, bytes]) -> None:
    """Flower keeps one record per task id: the split needs an id of its own.

    ``Task.replace`` hands the replaced task's id on to the canvas that replaces it
    (celery/celery#7596), so a split that replaces itself with the chord shares the job
    id with the merge, and Flower shows only the merge.
    """
    job_id, _ = finished_job
    tasks = job_tasks(flower, job_id, expected=8, timeout=20)
    names = sorted(t["name"] for t in tasks.values())
    assert names == ["tilechord.edit"] * 6 + ["tilechord.merge", "tilechord.split"], names
    split = next(t for t in tasks.values() if t["name"] == "tilechord.split")
    assert split["state"] == "SUCCESS"
    assert "360x240" in split["args"] and "gaussian_blur" in split["args"], split["args"]


def test_flower_lists_the_session_worker(flower: Flower, worker: WorkerPool) -> None:
    deadline = time.monotonic() + 30
    while worker.nodename not in (workers := api(flower, "/api/workers?refresh=1")):
        assert time.monotonic() < deadline, list(workers)
        time.sleep(0.5)
    assert workers[worker.nodename]["stats"]["pool"]["max-concurrency"] == 2


# -- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's headless Chromium, installed here when missing and we may (root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "chromium is not installed; install Debian's `chromium` package (apt-get install chromium)"
        )
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"],
        check=True,
        capture_output=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get install chromium gave no chromium binary")
    return found


def browse(chromium: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Open *url* headless; the tasks page fills by ajax, so let virtual time run on."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    size = ["--window-size=1400,900", "--virtual-time-budget=10000"]
    return subprocess.run(
        [chromium, *flags, *size, *extra, url], capture_output=True, text=True, timeout=180, check=False
    )


@pytest.mark.slow
def test_flowers_tasks_page_in_a_browser_shows_the_jobs_tasks(
    chromium: str, flower: Flower, finished_job: tuple[str, bytes], tmp_path: Path
) -> None:
    job_id, _ = finished_job
    job_tasks(flower, job_id, expected=7)
    dom = browse(chromium, f"{flower.url}/tasks", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name in ("tilechord.edit", "tilechord.merge"):  # the split: see the test above
        assert name in dom.stdout, f"{name} is not on Flower's tasks page"
    assert f"job {job_id}: tile 1/6" in dom.stdout

    # docs/flower.png is regenerated on request only, so a test run leaves the tree clean
    target = (
        ROOT / "docs" / "flower.png" if os.environ.get("TILECHORD_UPDATE_DOCS") else tmp_path / "flower.png"
    )
    target.parent.mkdir(exist_ok=True)
    shot = browse(chromium, f"{flower.url}/tasks", f"--screenshot={target}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    image = Image.open(target)
    assert image.size == (1400, 900)
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 10  # not a blank page
