"""An image-editing web service on tilechord (FastAPI): copy this file and make it yours.

    pip install -e '.[web]'                 # in a checkout (fastapi, uvicorn, python-multipart)
    tilechord up --no-flower                # or real workers: celery -A tilechord worker -Q tilechord
    export TILECHORD_REDIS_URL=...          # the line `tilechord up` prints (without it, the first
                                            # job starts a local cluster inside the service)
    uvicorn service:app --app-dir examples/web --host 127.0.0.1 --port 8000

``POST /edit`` takes a multipart upload (``image``), operations (``op``, repeated, in the
form or the query: ``op=grayscale&op=gaussian_blur:radius=4``), a ``grid`` (``2x1``,
``auto``) and an optional output ``format``, and answers the edited image with its
content type.  ``POST /jobs`` takes the same and answers ``202`` with the job's id;
``GET /jobs/{id}`` tells its status and progress; ``GET /jobs/{id}/result`` gives the
image; ``DELETE /jobs/{id}`` cancels it.  Errors are JSON, ``{"error": type, "detail":
message}``: 400 for a bad image, 422 for bad operations, grid or format, 413 for an upload
over ``TILECHORD_WEB_MAX_UPLOAD`` bytes (default 32 MiB) or an image over tilechord's
limits, 503 with no Redis or no worker, 504 past the job timeout.

Nothing waits in a thread: each request awaits its job on tilechord's asyncio client.  A
client that hangs up during ``POST /edit`` cancels its job: its running tiles are
stopped and its keys deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Form, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image

import tilechord
from tilechord import AsyncClient, AsyncJob, TilechordError

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_UPLOAD = int(os.environ.get("TILECHORD_WEB_MAX_UPLOAD", 32 * 1024 * 1024))
KEEP_RESULTS = float(os.environ.get("TILECHORD_WEB_KEEP_RESULTS", 600))  # seconds a finished job is kept
MAX_JOBS = int(os.environ.get("TILECHORD_WEB_MAX_JOBS", 1000))  # jobs of POST /jobs held at once

#: tilechord's errors as HTTP answers: the first class the error is an instance of.
STATUS: tuple[tuple[type[TilechordError], int], ...] = (
    (tilechord.ImageTooLarge, 413),
    (tilechord.InvalidImage, 400),
    (tilechord.UnknownOperation, 422),
    (tilechord.InvalidParameter, 422),
    (tilechord.UnsupportedMode, 422),
    (tilechord.UnsupportedFormat, 422),
    (tilechord.InvalidGrid, 422),
    (tilechord.NoWorker, 503),
    (tilechord.BrokerUnavailable, 503),
    (tilechord.JobTimeout, 504),
    (tilechord.JobCancelled, 410),
    (tilechord.JobFailed, 502),
)


def error_response(exc: TilechordError) -> JSONResponse:
    status = next((code for cls, code in STATUS if isinstance(exc, cls)), 500)
    return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)


def media_type(fmt: str | None) -> str:
    return Image.MIME.get((fmt or "").upper(), "application/octet-stream")


# --------------------------------------------------------------------------- the upload limit


class UploadTooLarge(Exception):
    pass


class UploadLimit:
    """Answer 413 to a request whose body is over *limit* bytes, declared or streamed.

    The body is read to its end (up to a bound) before the answer, so the client, still
    sending, reads a 413 rather than a reset connection.
    """

    DRAIN = 64 * 1024 * 1024  # past this much, give up reading and let the connection close

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            await self._drain(receive)
            await self._reject(send)
            return
        seen, over, started = 0, False, False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] == "http.request" and seen > self.limit:
                over = True
                if message.get("more_body"):
                    await self._drain(receive)
                raise UploadTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over:  # the app answered its own way (FastAPI: 400, a body it could not parse)
                if message["type"] == "http.response.start":
                    await self._reject(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded)
        except UploadTooLarge:
            if not started:
                await self._reject(send)

    async def _drain(self, receive: Receive) -> None:
        drained = 0
        while drained <= self.DRAIN:
            message = await receive()
            drained += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _reject(self, send: Send) -> None:
        body = (b'{"error":"UploadTooLarge","detail":"the upload is over the limit of %d bytes '
                b'(TILECHORD_WEB_MAX_UPLOAD)"}' % self.limit)  # fmt: skip
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                   (b"connection", b"close")]  # fmt: skip
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- hang-ups


class ClientGone(Exception):
    pass


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up (its body is read: the next message is the hang-up)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await *work*; cancel it if the client hangs up first (a cancelled job frees its workers)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()  # tilechord revokes the job's tasks and deletes its keys
        await asyncio.gather(task, gone, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


# --------------------------------------------------------------------------- jobs of POST /jobs


@dataclass
class Entry:
    job: AsyncJob
    task: asyncio.Task[bytes]
    ended: float | None = None


class JobTable:
    """The jobs of ``POST /jobs``, awaited in the background, kept :data:`KEEP_RESULTS` s once ended."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    def full(self) -> bool:
        self.sweep()
        return len(self.entries) >= MAX_JOBS

    def add(self, job: AsyncJob) -> None:
        entry = Entry(job, asyncio.create_task(job.get()))
        entry.task.add_done_callback(lambda _: setattr(entry, "ended", time.monotonic()))
        self.entries[job.id] = entry

    def sweep(self) -> None:
        now = time.monotonic()
        for key, entry in list(self.entries.items()):
            if entry.ended is not None and now - entry.ended > KEEP_RESULTS:
                del self.entries[key]

    def get(self, job_id: str) -> Entry | None:
        self.sweep()
        return self.entries.get(job_id)

    async def cancel_all(self) -> None:
        for entry in self.entries.values():
            entry.task.cancel()
        await asyncio.gather(*(e.task for e in self.entries.values()), return_exceptions=True)


def describe(entry: Entry) -> dict[str, Any]:
    job, task = entry.job, entry.task
    done, total = job.progress()
    # The job may have ended while its result is still being fetched: it is not done for us until
    # the task holding the result (or error) is, so SUCCESS always comes with a result URL.
    status = job.status if job.status not in ("SUCCESS", "FAILURE") else "STARTED"
    answer: dict[str, Any] = {"id": job.id, "status": status, "tiles_done": done, "tiles_total": total,
                              "result": None, "error": None}  # fmt: skip
    if task.done():
        cancelled = tilechord.JobCancelled(f"job {job.id} was cancelled")
        error = cancelled if task.cancelled() else task.exception()
        if error is None:
            url = f"/jobs/{job.id}/result"
            answer.update(status="SUCCESS", result=url, media_type=media_type(job.format))
        else:
            answer.update(status="FAILURE", error={"error": type(error).__name__, "detail": str(error)})
    return answer


# --------------------------------------------------------------------------- the app


def create_app(max_upload: int = MAX_UPLOAD) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = tilechord.Client()  # settings from TILECHORD_* variables
        async with AsyncClient(client) as aclient:
            app.state.tilechord, app.state.jobs = aclient, JobTable()
            try:
                yield
            finally:
                await app.state.jobs.cancel_all()
        client.close()

    app = FastAPI(title="tilechord web service", lifespan=lifespan)

    @app.exception_handler(TilechordError)
    async def tilechord_error(_: Request, exc: TilechordError) -> JSONResponse:  # async: no thread
        return error_response(exc)

    routes(app)
    app.add_middleware(UploadLimit, limit=max_upload)
    return app


Ops = Annotated[list[str], Form(description="an operation spec, repeated: gaussian_blur:radius=4")]
Grid = Annotated[str, Form(description="COLSxROWS or auto")]


async def _submit(
    request: Request, image: UploadFile, op: list[str], grid: str, format: str | None
) -> AsyncJob:
    """Send the upload as a job: operations, grid and format from the form or the query."""
    ops = [*op, *request.query_params.getlist("op")]
    grid = request.query_params.get("grid", grid)
    format = request.query_params.get("format", format) or None
    data = await image.read()
    aclient: AsyncClient = request.app.state.tilechord
    return await aclient.asubmit(data, ops, grid=grid, format=format)


def routes(app: FastAPI) -> None:
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "tilechord": tilechord.__version__}

    @app.post("/edit", response_class=Response)
    async def edit(request: Request, image: Annotated[UploadFile, File()], op: Ops = [],  # noqa: B006
                   grid: Grid = "2x1", format: Annotated[str | None, Form()] = None) -> Response:  # fmt: skip
        """The edited image, in the upload's format (or *format*)."""
        job = await _submit(request, image, op, grid, format)
        try:
            data = await unless_disconnected(request, job.get())
        except ClientGone:
            return Response(status_code=499)  # nobody reads it: the client has gone
        return Response(data, media_type=media_type(job.format))

    @app.post("/jobs", status_code=202)
    async def submit(request: Request, image: Annotated[UploadFile, File()], op: Ops = [],  # noqa: B006
                     grid: Grid = "2x1", format: Annotated[str | None, Form()] = None) -> Any:  # fmt: skip
        """Start a job; poll ``GET /jobs/{id}``."""
        jobs: JobTable = request.app.state.jobs
        if jobs.full():
            return JSONResponse({"error": "TooManyJobs", "detail": f"{MAX_JOBS} jobs held; try later"}, 429)
        job = await _submit(request, image, op, grid, format)
        jobs.add(job)
        return {"id": job.id, "status": job.status, "url": f"/jobs/{job.id}"}

    @app.get("/jobs/{job_id}")
    async def status(request: Request, job_id: str) -> Any:
        entry = request.app.state.jobs.get(job_id)
        if entry is None:
            return JSONResponse({"error": "NotFound", "detail": f"no job {job_id}"}, status_code=404)
        return describe(entry)

    @app.get("/jobs/{job_id}/result", response_class=Response)
    async def result(request: Request, job_id: str) -> Response:
        entry = request.app.state.jobs.get(job_id)
        if entry is None:
            return JSONResponse({"error": "NotFound", "detail": f"no job {job_id}"}, status_code=404)
        if not entry.task.done():
            return JSONResponse({"error": "NotFinished", "detail": f"job {job_id} is still running"}, 409)
        if entry.task.cancelled():
            return error_response(tilechord.JobCancelled(f"job {job_id} was cancelled"))
        error = entry.task.exception()
        if isinstance(error, TilechordError):
            return error_response(error)
        return Response(entry.task.result(), media_type=media_type(entry.job.format))

    @app.delete("/jobs/{job_id}", status_code=204)
    async def cancel(request: Request, job_id: str) -> Response:
        entry = request.app.state.jobs.get(job_id)
        if entry is None:
            return JSONResponse({"error": "NotFound", "detail": f"no job {job_id}"}, status_code=404)
        entry.task.cancel()  # the job's tasks are revoked, its keys deleted
        await asyncio.gather(entry.task, return_exceptions=True)
        return Response(status_code=204)


app = create_app()
