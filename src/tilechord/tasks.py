"""The tasks and the canvas that joins them: ``split -> chord(edit x N) -> merge``.

* ``tilechord.split`` decodes the source, cuts it into tiles with halos, stores them, and
  replaces itself with the chord, so the job's id ends up naming the merge's result.
* ``tilechord.edit`` runs the pipeline on one tile and stores the trimmed core.
* ``tilechord.merge`` pastes the cores into one image, encodes it, stores it and tells
  the waiting client.

Messages carry the job id, tile geometry and the pipeline: a few hundred bytes whatever
the image size.  Pixels stay in Redis (:mod:`tilechord.store`).  Tasks are idempotent
(they write keys derived from the job id and tile), so a task re-run after its worker
was killed is harmless.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Task, chord, group
from celery.utils.log import get_task_logger
from PIL import Image

from . import codec
from .errors import TilechordError
from .geometry import Grid, tiles
from .keys import JobKeys
from .operations import Pipeline
from .store import JobGone

if TYPE_CHECKING:
    from .celery_app import TilechordCelery

__all__ = ["register_tasks", "split_signature", "JobSpec"]

logger = get_task_logger("tilechord")

JobSpec = dict[str, Any]  # {"job", "ops", "grid", "format"}: json, small


def _short(pipeline: Pipeline) -> str:
    text = str(pipeline)
    return text if len(text) <= 200 else text[:197] + "..."


@contextmanager
def _reported(app: TilechordCelery, keys: JobKeys, what: str) -> Iterator[None]:
    """Log the task's time; on failure tell the waiting client at once, by error type.

    The first error wins the client's attention, so a job fails as fast as its first
    failing tile, without waiting for the chord to gather the others.
    """
    started = time.perf_counter()
    try:
        yield
    except JobGone:
        logger.info("job %s: %s skipped, the job was cancelled or expired", keys.job_id, what)
        raise
    except Exception as exc:
        if isinstance(exc, TilechordError):
            name, message = type(exc).__name__, str(exc)
        else:
            name = "JobFailed"
            message = f"{what} of job {keys.job_id} failed: {type(exc).__name__}: {exc}"
        logger.warning("job %s: %s failed: %s", keys.job_id, what, message)
        with contextlib.suppress(TilechordError):  # Redis gone too: the client's timeout reports it
            app.store.notify(keys, {"ok": False, "error": name, "message": message})
        raise
    else:
        logger.info("job %s: %s done in %.3f s", keys.job_id, what, time.perf_counter() - started)


def split_signature(app: TilechordCelery, spec: JobSpec, describe: str) -> Any:
    """The job's first task, with the job id as its task id (and so the result's id)."""
    return (
        app.tasks["tilechord.split"]
        .si(spec)
        .set(task_id=spec["job"], argsrepr=f"job {spec['job']}: {describe}")
    )


def register_tasks(app: TilechordCelery) -> None:
    """Define tilechord's tasks on *app* (an app factory, so each app has its own)."""
    store = app.store
    settings = app.tilechord_settings

    def task(name: str) -> Callable[[Callable[..., Any]], Task]:
        return app.task(  # type: ignore[no-any-return]
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            throws=(TilechordError,),  # expected failures: logged without a traceback
            shared=False,  # each app its own tasks (a shared task would reach every later app)
        )

    @task("tilechord.split")
    def split(self: Task, spec: JobSpec) -> Any:
        keys = JobKeys(spec["job"])
        pipeline = Pipeline.from_json(spec["ops"])
        with _reported(app, keys, "split"):
            source = store.get(keys, keys.source)
            image = codec.decode(source, settings.max_pixels)
            grid = Grid(*spec["grid"])
            parts = tiles(image.width, image.height, grid, pipeline.halo)
            for tile in parts:
                store.put(keys, keys.tile(tile.index), codec.pack_raw(image.crop(tile.cut)))
            size = list(image.size)
        header = group(
            app.tasks["tilechord.edit"]
            .si(spec["job"], spec["ops"], tile.index, tile.count, list(tile.cut), list(tile.box), size)
            .set(
                task_id=keys.task_id("edit", tile.index),
                argsrepr=f"job {spec['job']}: {tile.describe()} [{_short(pipeline)}]",
            )
            for tile in parts
        )
        out_size = list(pipeline.output_size((image.width, image.height)))
        body = (
            app.tasks["tilechord.merge"]
            .si(spec, len(parts), out_size)
            .set(
                argsrepr=f"job {spec['job']}: {len(parts)} tiles -> "
                f"{out_size[0]}x{out_size[1]} {spec['format'] or 'raw'}"
            )
        )
        return self.replace(chord(header, body))

    @task("tilechord.edit")
    def edit(
        self: Task,
        job: str,
        ops: list[Any],
        index: int,
        count: int,
        cut: list[int],
        box: list[int],
        size: list[int],
    ) -> dict[str, Any]:
        keys = JobKeys(job)
        where = f"edit of tile {index + 1}/{count}"
        with _reported(app, keys, where):
            pipeline = Pipeline.from_json(ops)
            piece, _ = codec.unpack_raw(store.get(keys, keys.tile(index)))
            out, dest = pipeline.run_tile(
                piece,
                (cut[0], cut[1], cut[2], cut[3]),
                (box[0], box[1], box[2], box[3]),
                (size[0], size[1]),
            )
            store.put(keys, keys.edited(index), codec.pack_raw(out, {"box": list(dest)}))
            store.tile_done(keys)
        return {"tile": index, "box": list(dest)}

    @task("tilechord.merge")
    def merge(self: Task, spec: JobSpec, count: int, size: list[int]) -> dict[str, Any]:
        keys = JobKeys(spec["job"])
        with _reported(app, keys, "merge"):
            canvas: Image.Image | None = None
            for index in range(count):
                piece, extra = codec.unpack_raw(store.get(keys, keys.edited(index)))
                if canvas is None:
                    canvas = Image.new(piece.mode, (size[0], size[1]))
                    if piece.mode in ("P", "PA") and piece.palette is not None:
                        canvas.putpalette(piece.getpalette(piece.palette.mode) or [], piece.palette.mode)
                    if "transparency" in piece.info:
                        canvas.info["transparency"] = piece.info["transparency"]
                x0, y0 = extra["box"][:2]
                canvas.paste(piece, (x0, y0))
            assert canvas is not None
            source = store.get(keys, keys.source)
            original = None if codec.is_raw(source) else Image.open(io.BytesIO(source))
            data = codec.encode(canvas, spec["format"], original)
            store.put(keys, keys.result, data)
            store.notify(keys, {"ok": True})
        return {
            "size": list(canvas.size),
            "mode": canvas.mode,
            "format": spec["format"] or "raw",
            "bytes": len(data),
        }

    del split, edit, merge  # registered on the app; reach them through app.tasks
