"""The tasks and the canvas that joins them.

A job with no global operation is ``split -> chord(edit x N) -> merge``:

* ``tilechord.split`` (task id: the job id) decodes the source (every frame of an
  animation), cuts it into tiles with halos, stores them and sends the chord; a small
  JPEG's tiles decode the source themselves, and a job of one tile is done right here.
* ``tilechord.edit`` runs the pipeline on one tile and stores the trimmed core.
* ``tilechord.merge`` (``<job>-merge``) pastes the cores into one image per frame,
  encodes it, stores it and tells the waiting client.

Each task has an id of its own (``<job>-edit-3`` ...), so Flower lists every one; the
split sends the next stage rather than ``Task.replace``-ing itself, which would hand its
id on to the merge (celery/celery#7596) and hide the split.

Each global operation (``contrast``, ``autocontrast``, ``equalize``) adds a stage before
the edits: ``chord(stats x N) -> reduce``.  ``tilechord.stats`` runs the pipeline up to
the global step on one tile and stores its core's histogram; ``tilechord.reduce`` adds
them into the whole image's, stores it, and sends the next stage.  Later
stages apply the global step with that histogram, so every tile sees the same statistic.

Messages carry the job id, tile geometry and the pipeline: a few hundred bytes whatever
the image size.  Pixels and histograms stay in Redis (:mod:`tilechord.worker.store`).  Tasks are
idempotent (they write keys derived from the job id and tile), so a task re-run after its
worker was killed is harmless.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Task, chord, group
from celery.utils.log import get_task_logger
from PIL import Image

from ..errors import JobGone, TilechordError
from ..imaging import codec
from ..imaging.geometry import Grid, tiles
from ..ops import Histogram, Pipeline, add_histograms
from .keys import JobKeys

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = ["register_tasks", "split_signature", "JobSpec"]

logger = get_task_logger("tilechord")

JobSpec = dict[str, Any]  # {"job", "ops", "grid", "format", "frames"}: json, small
TileSpec = dict[str, Any]  # {"index", "frame", "cut", "box", "size", "label"}: one tile's task
Plan = dict[str, Any]  # {"sizes": [[w, h] per frame], "timing": {...}}: stored by the split


def _short(pipeline: Pipeline) -> str:
    return _clip(str(pipeline))


def _ops_text(ops: list[Any]) -> str:
    """A pipeline's json as a readable line for logs, without needing its operations."""
    steps = [
        str(name) + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        for name, params in ops
    ]
    return _clip(" | ".join(steps) or "identity")


def _clip(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def _failure(exc: BaseException, where: str) -> tuple[str, str]:
    """The error name and message a client gets: ours as they are, anything else as JobFailed."""
    if isinstance(exc, TilechordError):
        return type(exc).__name__, str(exc)
    return "JobFailed", f"{where} failed: {type(exc).__name__}: {exc}"


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
        name, message = _failure(exc, f"{what} of job {keys.job_id}")
        logger.warning("job %s: %s failed: %s", keys.job_id, what, message)
        with contextlib.suppress(TilechordError):  # Redis gone too: the client's timeout reports it
            app.store.notify(keys, {"ok": False, "error": name, "message": message})
        raise
    else:
        logger.info("job %s: %s done in %.3f s", keys.job_id, what, time.perf_counter() - started)


#: A single-frame JPEG cut into this many tiles or fewer is decoded by each tile's task
#: itself: decoding a JPEG costs less than the split storing its raw pixels in Redis and
#: every tile reading them back (``scripts/bench.py`` shows the difference).
DECODE_IN_PLACE_TILES = 4
DECODE_IN_PLACE_FORMATS = frozenset({"JPEG"})


def split_signature(app: TilechordCelery, spec: JobSpec, describe: str) -> Any:
    """The job's first task, with the job id as its task id."""
    return (
        app.tasks["tilechord.split"]
        .si(spec)
        .set(task_id=spec["job"], argsrepr=f"job {spec['job']}: {describe}")
    )


def job_tiles(spec: JobSpec, plan: Plan, halo: int) -> list[TileSpec]:
    """Every tile of every frame, numbered across frames: the same list in every task."""
    grid = Grid(*spec["grid"])
    frames = len(plan["sizes"])
    out: list[TileSpec] = []
    for frame, (width, height) in enumerate(plan["sizes"]):
        for tile in tiles(width, height, grid, halo):
            label = tile.describe() if frames == 1 else f"frame {frame + 1}/{frames}, {tile.describe()}"
            out.append(
                {
                    "index": len(out),
                    "frame": frame,
                    "cut": list(tile.cut),
                    "box": list(tile.box),
                    "size": [width, height],
                    "label": label,
                    "decode": bool(plan.get("decode")),
                }
            )
    return out


def _tile_count(spec: JobSpec, sizes: list[list[int]]) -> int:
    grid = Grid(*spec["grid"])
    return sum(clipped.cols * clipped.rows for clipped in (grid.clip(w, h) for w, h in sizes))


def _piece(app: TilechordCelery, keys: JobKeys, tile: TileSpec) -> Image.Image:
    """A tile's input pixels: stored raw by the split, or cut here from the decoded source."""
    if tile["decode"]:
        image = codec.decode(app.store.get(keys, keys.source), app.tilechord_settings.max_pixels)
        return image.crop(_box(tile["cut"]))
    return codec.unpack_raw(app.store.get_pixels(keys, keys.tile(tile["index"])))[0]


def _finish(
    app: TilechordCelery,
    keys: JobKeys,
    spec: JobSpec,
    frames: list[Image.Image],
    timing: Any,
    source: Image.Image | None,
    count_tile: bool = False,
) -> Any:
    """Encode the result, store it, and tell the waiting client.

    *source* is the source image as opened or decoded (its ``info`` and tables are all
    the encoder needs for the metadata), or ``None`` for a raw source, which has none.
    """
    original = source if source is not None and source.format else None
    data = codec.encode_frames(frames, spec["format"], original, codec.Timing.from_json(timing))
    app.store.finish(keys, data, count_tile)
    return {
        "size": list(frames[0].size),
        "mode": frames[0].mode,
        "frames": len(frames),
        "format": spec["format"] or "raw",
        "bytes": len(data),
    }


def _cut(
    app: TilechordCelery, keys: JobKeys, spec: JobSpec, pipeline: Pipeline, source: codec.Data
) -> Plan | Image.Image:
    """Lay the job out and store what its tiles need; for a job of one tile, its image."""
    settings = app.tilechord_settings
    count = int(spec.get("frames", 1))
    if count == 1 and not codec.is_raw(source):
        info = codec.inspect_source(source, settings.max_pixels)  # the header only
        sizes = [list(info.size)]
        tiles_in_all = _tile_count(spec, sizes)
        if 1 < tiles_in_all <= DECODE_IN_PLACE_TILES and info.format in DECODE_IN_PLACE_FORMATS:
            plan: Plan = {"sizes": sizes, "timing": {}, "decode": True}
            app.store.put(keys, keys.plan, json.dumps(plan).encode())
            return plan
    frames, timing = codec.decode_frames(source, settings.max_pixels, count)
    plan = {"sizes": [list(f.size) for f in frames], "timing": timing.to_json(), "raw": codec.is_raw(source)}
    if _tile_count(spec, plan["sizes"]) == 1:
        return frames[0]
    for tile in job_tiles(spec, plan, pipeline.halo):
        piece = frames[tile["frame"]].crop(_box(tile["cut"]))
        app.store.put(keys, keys.tile(tile["index"]), codec.pack_raw(piece))
    app.store.put(keys, keys.plan, json.dumps(plan).encode())
    return plan


def _summary(spec: JobSpec, plan: Plan, pipeline: Pipeline) -> dict[str, Any]:
    """The split's result as Flower shows it: how the job was laid out."""
    return {
        "tiles": _tile_count(spec, plan["sizes"]),
        "frames": len(plan["sizes"]),
        "size": plan["sizes"][0],
        "halo": pipeline.halo,
        "stages": len(pipeline.global_steps) + 1,
        "decode": "in each tile" if plan.get("decode") else "once, in the split",
    }


def _box(values: list[int]) -> tuple[int, int, int, int]:
    return (values[0], values[1], values[2], values[3])


def _load_json(app: TilechordCelery, keys: JobKeys, key: str) -> Any:
    return json.loads(app.store.get(keys, key))


def _histograms(
    app: TilechordCelery, keys: JobKeys, pipeline: Pipeline, frame: int, stages: int
) -> dict[int, Histogram]:
    """The whole image's histograms of the first *stages* global steps, for one frame."""
    steps = pipeline.global_steps
    return {steps[s]: _load_json(app, keys, keys.statistic(s))[frame] for s in range(stages)}


def _next_stage(app: TilechordCelery, spec: JobSpec, plan: Plan, stage: int) -> Any:
    """The chord after *stage* reduces: the next global step's stats, or the edits and merge."""
    job = spec["job"]
    keys = JobKeys(job)
    pipeline = Pipeline.from_json(spec["ops"])
    parts = job_tiles(spec, plan, pipeline.halo)
    short = _short(pipeline)
    if stage < len(pipeline.global_steps):
        step = pipeline.steps[pipeline.global_steps[stage]]
        header = group(
            app.tasks["tilechord.stats"]
            .si(job, spec["ops"], stage, tile)
            .set(
                task_id=keys.task_id(f"stats{stage}", tile["index"]),
                argsrepr=f"job {job}: histogram for {step.spec}, {tile['label']} [{short}]",
            )
            for tile in parts
        )
        body = (
            app.tasks["tilechord.reduce"]
            .si(spec, stage)
            .set(
                task_id=keys.task_id(f"reduce{stage}"),
                argsrepr=f"job {job}: add {len(parts)} histograms for {step.spec}",
            )
        )
        return chord(header, body)
    header = group(
        app.tasks["tilechord.edit"]
        .si(job, spec["ops"], tile)
        .set(task_id=keys.task_id("edit", tile["index"]), argsrepr=f"job {job}: {tile['label']} [{short}]")
        for tile in parts
    )
    sizes = [pipeline.output_size((w, h)) for w, h in plan["sizes"]]
    frames = f"{len(sizes)} frames of " if len(sizes) > 1 else ""
    body = (
        app.tasks["tilechord.merge"]
        .si(spec)
        .set(
            task_id=keys.task_id("merge"),
            argsrepr=f"job {job}: {len(parts)} tiles -> {frames}"
            f"{sizes[0][0]}x{sizes[0][1]} {spec['format'] or 'raw'}",
        )
    )
    return chord(header, body)


def register_tasks(app: TilechordCelery) -> None:
    """Define tilechord's tasks on *app* (an app factory, so each app has its own)."""
    store = app.store

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
        with _reported(app, keys, "split"):
            pipeline = Pipeline.from_json(spec["ops"])  # in here: a worker without a plugin reports it
            source = store.get_pixels(keys, keys.source)
            plan = _cut(app, keys, spec, pipeline, source)
            if isinstance(plan, Image.Image):  # one tile in all: the whole image, here, no chord
                edited = pipeline.apply(plan)
                return _finish(app, keys, spec, [edited], {}, plan, count_tile=True)
            stage = _next_stage(app, spec, plan, 0)
            stage.apply_async(add_to_parent=False)  # the split's result stays a short summary
        return _summary(spec, plan, pipeline)

    @task("tilechord.stats")
    def stats(self: Task, job: str, ops: list[Any], stage: int, tile: TileSpec) -> dict[str, Any]:
        keys = JobKeys(job)
        with _reported(app, keys, f"histogram of {tile['label']}"):
            pipeline = Pipeline.from_json(ops)
            step = pipeline.global_steps[stage]
            piece = _piece(app, keys, tile)
            known = _histograms(app, keys, pipeline, tile["frame"], stage)
            out, _ = pipeline.run_tile(
                piece, _box(tile["cut"]), _box(tile["box"]), (tile["size"][0], tile["size"][1]), known, step
            )
            histogram = pipeline.steps[step].measure(out)
            store.put(keys, keys.partial(stage, tile["index"]), json.dumps(histogram).encode())
        return {"tile": tile["index"], "stage": stage, "pixels": sum(histogram)}

    @task("tilechord.reduce")
    def reduce(self: Task, spec: JobSpec, stage: int) -> Any:
        keys = JobKeys(spec["job"])
        with _reported(app, keys, f"reduce of stage {stage + 1}"):
            plan: Plan = _load_json(app, keys, keys.plan)
            pipeline = Pipeline.from_json(spec["ops"])
            by_frame: list[list[Histogram]] = [[] for _ in plan["sizes"]]
            for tile in job_tiles(spec, plan, pipeline.halo):
                by_frame[tile["frame"]].append(_load_json(app, keys, keys.partial(stage, tile["index"])))
            whole = [add_histograms(parts) for parts in by_frame]
            store.put(keys, keys.statistic(stage), json.dumps(whole).encode())
            _next_stage(app, spec, plan, stage + 1).apply_async(add_to_parent=False)
        return {"stage": stage + 1, "tiles": sum(len(parts) for parts in by_frame)}

    @task("tilechord.edit")
    def edit(self: Task, job: str, ops: list[Any], tile: TileSpec) -> dict[str, Any]:
        keys = JobKeys(job)
        with _reported(app, keys, f"edit of {tile['label']} [{_ops_text(ops)}]"):
            pipeline = Pipeline.from_json(ops)
            piece = _piece(app, keys, tile)
            known = _histograms(app, keys, pipeline, tile["frame"], len(pipeline.global_steps))
            out, dest = pipeline.run_tile(
                piece, _box(tile["cut"]), _box(tile["box"]), (tile["size"][0], tile["size"][1]), known
            )
            store.put(keys, keys.edited(tile["index"]), codec.pack_raw(out, {"box": list(dest)}))
            store.tile_done(keys)
        return {"tile": tile["index"], "box": list(dest)}

    @task("tilechord.merge")
    def merge(self: Task, spec: JobSpec) -> Any:
        keys = JobKeys(spec["job"])
        with _reported(app, keys, "merge"):
            plan: Plan = _load_json(app, keys, keys.plan)
            pipeline = Pipeline.from_json(spec["ops"])
            layout = job_tiles(spec, plan, pipeline.halo)
            frames, read = _strips(app, keys, pipeline, layout)
            if not frames:
                frames = _pasted(app, keys, pipeline, layout, plan, read)
            # The source again, for its metadata; a raw one (maybe 36 MB) has none to read.
            source = None if plan.get("raw") else Image.open(io.BytesIO(store.get(keys, keys.source)))
            return _finish(app, keys, spec, frames, plan["timing"], source)

    @task("tilechord.batch")
    def batch(self: Task, batch: str, ops: list[Any], format: str | None) -> dict[str, Any]:
        """Several small images in one task: a Celery round trip costs more than one of them.

        Each image ends on its own, with its result or its own error: one bad file fails
        only itself.  Results go back a few at a time (every :data:`BATCH_REPORT_S`), so
        the client sees progress and can start writing files while the rest run.  A
        re-delivered batch redoes its images; the client counts each image once.
        """
        keys = JobKeys(batch)
        started = time.perf_counter()
        what = f"batch {batch} [{_ops_text(ops)}]"
        try:
            total, failed = _run_batch(app, keys, ops, format, what)
        except JobGone:
            logger.info("%s skipped, the batch was cancelled or expired", what)
            raise
        logger.info(
            "batch %s: %d images [%s], %d failed, done in %.3f s",
            batch, total, _ops_text(ops), failed, time.perf_counter() - started,
        )  # fmt: skip
        return {"images": total, "failed": failed}

    del split, stats, reduce, edit, merge, batch  # registered on the app; reach them through app.tasks


#: How often a batch sends the results it has so far (seconds of work).
BATCH_REPORT_S = 0.1


def _run_batch(
    app: TilechordCelery, keys: JobKeys, ops: list[Any], format: str | None, what: str
) -> tuple[int, int]:
    """Edit every image of a batch, reporting as it goes; ``(images, failed)``."""
    store = app.store
    sources = store.batch_sources(keys)
    total = len(sources)
    try:
        pipeline = Pipeline.from_json(ops)
    except TilechordError as exc:  # a worker without the plugin: every image fails alike
        store.batch_report(keys, {}, [_item_error(i, exc, what) for i in sorted(sources)])
        raise
    results: dict[int, bytes] = {}
    ended: list[dict[str, Any]] = []
    failed = 0
    reported = time.perf_counter()
    for item in sorted(sources):
        try:
            image = codec.decode(sources.pop(item), app.tilechord_settings.max_pixels)
            original = image if image.format else None
            results[item] = codec.encode_frames([pipeline.apply(image)], format, original, codec.Timing())
            ended.append({"item": item, "ok": True})
        except Exception as exc:  # that image's own failure, reported to the client
            failed += 1
            ended.append(_item_error(item, exc, what))
        if not sources or time.perf_counter() - reported >= BATCH_REPORT_S:
            store.batch_report(keys, results, ended)
            results, ended, reported = {}, [], time.perf_counter()
    return total, failed


def _item_error(item: int, exc: BaseException, what: str) -> dict[str, Any]:
    """One image's failure in a batch, as the client turns it back into a typed error."""
    name, message = _failure(exc, f"image {item + 1} of {what}")
    logger.warning("%s: image %d failed: %s", what, item + 1, message)
    return {"item": item, "ok": False, "error": name, "message": message}


def _strips(
    app: TilechordCelery, keys: JobKeys, pipeline: Pipeline, layout: list[TileSpec]
) -> tuple[list[Image.Image], list[codec.Data]]:
    """A single frame cut in full-width strips (what ``grid="auto"`` gives): joined, not pasted.

    Returns the frame (none if the edited tiles are no such strips) and the tiles it read.
    """
    if len(layout) < 2 or any(tile["frame"] or tile["box"][0] for tile in layout):
        return [], []
    size = pipeline.output_size((layout[0]["size"][0], layout[0]["size"][1]))
    blobs: list[codec.Data] = [app.store.get_pixels(keys, keys.edited(tile["index"])) for tile in layout]
    joined = codec.join_strips(blobs, size)
    return ([], blobs) if joined is None else ([joined], blobs)


def _pasted(
    app: TilechordCelery,
    keys: JobKeys,
    pipeline: Pipeline,
    layout: list[TileSpec],
    plan: Plan,
    read: list[codec.Data],
) -> list[Image.Image]:
    """Each frame's edited tiles pasted onto a canvas of the output's size (*read*: already read)."""
    canvases: list[Image.Image | None] = [None] * len(plan["sizes"])
    for n, tile in enumerate(layout):
        blob = read[n] if read else app.store.get_pixels(keys, keys.edited(tile["index"]))
        piece, extra = codec.unpack_raw(blob)
        frame = tile["frame"]
        canvas = canvases[frame]
        if canvas is None:
            canvas = canvases[frame] = _blank_like(piece, pipeline.output_size(tuple(tile["size"])))
        canvas.paste(piece, tuple(extra["box"][:2]))
    return [c for c in canvases if c is not None]


def _blank_like(piece: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An empty canvas of *size* in the mode, palette and transparency of an edited tile."""
    canvas = Image.new(piece.mode, size)
    if piece.mode in ("P", "PA") and piece.palette is not None:
        canvas.putpalette(piece.getpalette(piece.palette.mode) or [], piece.palette.mode)
    if "transparency" in piece.info:
        canvas.info["transparency"] = piece.info["transparency"]
    return canvas
