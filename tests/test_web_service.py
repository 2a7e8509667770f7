"""The example web service (examples/web/service.py), run for real.

uvicorn serves it as a subprocess on a free loopback port, against the session's Redis
and workers (with their plugins); httpx and a raw socket talk to it as clients do.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from PIL import Image, ImageOps
from procs import wait_for
from reference import reference, same_image
from workers import tilechord_keys, worker_env

from tilechord import Client
from tilechord.local import WorkerPool
from tilechord.worker.keys import JobKeys

SERVICE = Path(__file__).resolve().parents[1] / "examples" / "web"
MAX_UPLOAD = 1_000_000
SLOW = "test_slow:seconds=30"  # a tile a worker sleeps in: only a kill frees the worker
FREED_WITHIN = 5.0  # s for a hang-up to free the workers (measured under 2; a loaded machine is slower)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_leftovers")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def service(redis_url: str, worker: WorkerPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service's base URL; uvicorn is stopped (SIGTERM, then SIGKILL) afterwards."""
    port = _free_port()
    env = {**os.environ, **worker_env(redis_url), "TILECHORD_WORKERS": "2", "TILECHORD_JOB_TIMEOUT": "120",
           "TILECHORD_KEY_TTL": "900", "TILECHORD_WEB_MAX_UPLOAD": str(MAX_UPLOAD)}  # fmt: skip
    log = (tmp_path_factory.mktemp("web") / "uvicorn.log").open("w+")
    command = [sys.executable, "-m", "uvicorn", "service:app", "--app-dir", str(SERVICE),
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _healthy(url) or server.poll() is not None, timeout=60) or server.poll():
            log.seek(0)
            raise AssertionError(f"the service did not start:\n{log.read()[-3000:]}")
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
async def http(service: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=service, timeout=120, limits=limits) as c:
        yield c


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


PIPELINES: list[list[Any]] = [
    ["grayscale", "gaussian_blur:radius=3"],
    ["sharpen"],
    ["median:size=3", "invert"],
    ["mirror", "box_blur:radius=2"],
    ["posterize:bits=3"],
]
FORMATS = [("PNG", "image/png"), ("TIFF", "image/tiff"), ("BMP", "image/bmp")]


async def test_fifty_concurrent_uploads_get_pillows_pixels(http: httpx.AsyncClient) -> None:
    async def one(n: int) -> None:
        image = photo(80 + 7 * n, 60 + 3 * n, "RGB", seed=n)
        ops = PIPELINES[n % len(PIPELINES)]
        fmt, mime = FORMATS[n % len(FORMATS)]
        grid = ["2x1", "1x2", "3x2", "auto"][n % 4]
        files = {"image": (f"shot-{n}.{fmt.lower()}", encoded(image, fmt), mime)}
        answer = await http.post("/edit", files=files, data={"op": ops, "grid": grid})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == mime
        result = _decoded(answer.content)
        assert result.format == fmt and same_image(result, reference(image, ops)), n

    await asyncio.gather(*(one(n) for n in range(50)))


async def test_operations_grid_and_format_in_the_query(http: httpx.AsyncClient) -> None:
    image = photo(120, 90, seed=7)
    files = {"image": ("a.png", encoded(image, "PNG"), "image/png")}
    answer = await http.post("/edit?op=flip&op=invert&grid=2x2&format=tiff", files=files)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/tiff"
    assert _decoded(answer.content).tobytes() == ImageOps.invert(ImageOps.flip(image)).tobytes()


def _upload(data: bytes, ops: list[str] | None = None, **form: str) -> dict[str, Any]:
    return {"files": {"image": ("x.png", data, "image/png")}, "data": {"op": ops or ["invert"], **form}}


async def test_bad_uploads_get_a_clear_4xx(http: httpx.AsyncClient) -> None:
    png = encoded(photo(64, 48), "PNG")
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        (_upload(b"this is not an image"), 400, "InvalidImage", "image"),
        (_upload(encoded(photo(64, 48), "JPEG")[:200]), 400, "InvalidImage", "truncated"),
        (_upload(png, ["gausian_blur"]), 422, "UnknownOperation", "did you mean"),
        (_upload(png, ["gaussian_blur:radius=-1"]), 422, "InvalidParameter", "radius"),
        (_upload(png, grid="0x2"), 422, "InvalidGrid", "grid"),
        (_upload(png, format="NOPE"), 422, "UnsupportedFormat", "NOPE"),
    ]
    for request, status, error, words in cases:
        answer = await http.post("/edit", **request)
        assert answer.status_code == status, (request["data"], answer.text)
        body = answer.json()
        assert body["error"] == error and words.lower() in body["detail"].lower(), body
    missing = await http.post("/edit", data={"op": ["invert"]})
    assert missing.status_code == 422 and "image" in missing.text


async def test_an_upload_over_the_limit_gets_413(http: httpx.AsyncClient) -> None:
    big = os.urandom(MAX_UPLOAD + 1)
    answer = await http.post("/edit", **_upload(big))
    assert answer.status_code == 413
    assert "TILECHORD_WEB_MAX_UPLOAD" in answer.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield (b'--B\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")  # fmt: skip
        for _ in range(4):
            yield b"x" * (MAX_UPLOAD // 3)
        yield b"\r\n--B--\r\n"

    multipart = {"content-type": "multipart/form-data; boundary=B"}
    streamed = await http.post("/edit", content=chunks(), headers=multipart)
    assert streamed.status_code == 413
    assert (await http.get("/health")).status_code == 200


async def test_jobs_submit_poll_and_fetch(http: httpx.AsyncClient) -> None:
    image = photo(300, 200, seed=11)
    ops = ["unsharp_mask", "solarize:threshold=100"]
    sent = await http.post("/jobs", **_upload(encoded(image, "PNG"), ops, grid="3x2"))
    assert sent.status_code == 202, sent.text
    url = sent.json()["url"]
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append((await http.get(url)).json())
        if seen[-1]["status"] in ("SUCCESS", "FAILURE"):
            break
        await asyncio.sleep(0)  # no pause: a SUCCESS told before its result is fetched is caught
    final = seen[-1]
    assert final["status"] == "SUCCESS" and final["tiles_done"] == final["tiles_total"] == 6, final
    assert all(0 <= s["tiles_done"] <= 6 for s in seen)
    assert final["result"] == f"{url}/result", final  # SUCCESS always comes with its result
    result = await http.get(final["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert same_image(_decoded(result.content), reference(image, ops))
    assert (await http.get("/jobs/nope")).status_code == 404


async def test_deleting_a_job_cancels_it(
    http: httpx.AsyncClient, client: Client, redis_client: redis.Redis
) -> None:
    sent = await http.post("/jobs", **_upload(encoded(photo(400, 300), "PNG"), [SLOW], grid="2x1"))
    job = sent.json()
    assert (await http.get(f"/jobs/{job['id']}/result")).status_code == 409
    assert await asyncio.to_thread(wait_for, lambda: _edits_running(client, JobKeys(job["id"])), 30)
    assert (await http.delete(job["url"])).status_code == 204
    final = (await http.get(job["url"])).json()
    assert final["status"] == "FAILURE" and final["error"]["error"] == "JobCancelled"
    assert (await http.get(f"/jobs/{job['id']}/result")).status_code == 410
    await asyncio.to_thread(_assert_freed, client, redis_client)


# --------------------------------------------------------------------------- hang-ups


def _edits_running(client: Client, keys: JobKeys) -> bool:
    return all(AsyncResult(keys.task_id("edit", i), app=client.app).state == "STARTED" for i in range(2))


def _running_job(client: Client, r: redis.Redis) -> JobKeys | None:
    lives = [k.decode().split(":")[1] for k in r.scan_iter(match="tilechord:*:live")]
    if len(lives) == 1 and _edits_running(client, JobKeys(lives[0])):
        return JobKeys(lives[0])
    return None


def _found(into: list[JobKeys], keys: JobKeys | None) -> bool:
    if keys is not None:
        into.append(keys)
    return bool(into)


def _assert_freed(client: Client, r: redis.Redis) -> None:
    """No key left, and both workers free for the next job, soon (far below SLOW's 30 s)."""
    assert wait_for(lambda: not tilechord_keys(r), timeout=FREED_WITHIN), tilechord_keys(r)
    image = photo(64, 48)
    started = time.monotonic()
    result = client.process_image(image, ["invert"], grid=(1, 1), timeout=FREED_WITHIN)
    assert time.monotonic() - started < FREED_WITHIN
    assert result.tobytes() == ImageOps.invert(image).tobytes()


def test_a_client_that_hangs_up_mid_job_leaves_no_key_and_no_busy_worker(
    service: str, client: Client, redis_client: redis.Redis
) -> None:
    files = {"image": ("a.png", encoded(photo(400, 300), "PNG"), "image/png")}
    request = httpx.Request("POST", f"{service}/edit", files=files, data={"op": [SLOW], "grid": "2x1"})
    body = request.read()
    head = ["POST /edit HTTP/1.1", f"Host: {request.url.netloc.decode()}", f"Content-Length: {len(body)}",
            f"Content-Type: {request.headers['content-type']}", "", ""]  # fmt: skip
    found: list[JobKeys] = []
    with socket.create_connection(("127.0.0.1", int(service.rsplit(":", 1)[1]))) as conn:
        conn.sendall("\r\n".join(head).encode() + body)
        assert wait_for(lambda: _found(found, _running_job(client, redis_client)), timeout=30)
    # The connection is closed, the job's two tiles still asleep: the service must cancel the job.
    _assert_freed(client, redis_client)
    states = {AsyncResult(found[0].task_id("edit", i), app=client.app).state for i in range(2)}
    assert states == {"REVOKED"}, states
