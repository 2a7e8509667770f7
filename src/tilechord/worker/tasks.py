"""The tasks: plain module-level functions, bound to an app in one place (:func:`bind`).

* ``tilechord.split`` (task id: the job id) decodes the source (every frame of an
  animation), cuts it into tiles with halos, stores them and sends the next stage (see
  :mod:`tilechord.worker.canvas`); a small JPEG's tiles decode the source themselves,
  and a job of one tile is done right here.
* ``tilechord.stats`` runs the pipeline up to a global step on one tile and stores its
  core's histogram; ``tilechord.reduce`` adds them into the whole image's and sends the
  next stage, so every tile of a later stage sees the same statistic.
* ``tilechord.edit`` runs the pipeline on one tile and stores the trimmed core.
* ``tilechord.merge`` (``<job>-merge``) joins the cores (:mod:`tilechord.worker.merge`).
* ``tilechord.batch`` edits several small images in one task (:mod:`tilechord.worker.batch`).

Messages carry the job id, tile geometry and the pipeline (:mod:`tilechord.worker.specs`);
pixels and histograms stay in Redis (:mod:`tilechord.worker.store`).  Tasks are
idempotent (they write keys derived from the job id and tile), so a task re-run after its
worker was killed is harmless.  Late acknowledgement and requeue on a lost worker come
from the app's configuration (:func:`tilechord.config.celery_config`), not from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from celery import Task
from celery.exceptions import Ignore, Reject
from PIL import Image

from ..errors import JobGone, RedisUnreachable, TilechordError
from ..imaging.decode import decode, decode_frames, inspect_source, open_checked
from ..imaging.raw import RAW_HEAD, Data, is_raw, pack_raw, raw_layout, unpack_raw
from ..ops import Histogram, Pipeline, add_histograms
from .batch import run_batch
from .canvas import (
    DECODE_IN_PLACE_FORMATS,
    DECODE_IN_PLACE_TILES,
    job_tiles,
    next_stage,
    ops_text,
    tile_count,
)
from .keys import JobKeys
from .merge import finish, merge_frames, source_header
from .report import logger, reported
from .specs import BATCH, EDIT, MERGE, REDUCE, SPLIT, STATS, JobSpec, Plan, TileSpec
from .stream import encode_core, merge_stream, read_piece, region_layout, strip_tiles
from .window import FEEDER_TTL, RangeReader, Waiting, is_packed, read_windowed

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = ["bind"]


def _app(task: Task) -> TilechordCelery:
    return cast("TilechordCelery", task.app)


def split(self: Task, spec_json: dict[str, Any]) -> Any:
    spec = JobSpec.from_json(spec_json)
    app, keys = _app(self), JobKeys(spec.job)
    with reported(app, keys, "split"):
        pipeline = Pipeline.from_json(spec.ops)  # in here: a worker without a plugin reports it
        plan: Plan | Image.Image | None = _region_plan(app, keys, spec, pipeline)  # the header only
        if plan is None and spec.window:  # a PNG sent through a window: its header, no pixels
            plan = _png_window_plan(app, keys, spec, pipeline)
        if plan is None:
            plan = _cut(app, keys, spec, pipeline, app.store.get_pixels(keys, keys.source))
        if isinstance(plan, Image.Image):  # one tile in all: the whole image, here, no chord
            return finish(app, keys, spec, [pipeline.apply(plan)], {}, plan, count_tile=True)
        if not plan.fed:  # (a fed plan's chord went out before its tiles)
            next_stage(app, spec, plan, 0).apply_async(add_to_parent=False)  # the split's result stays short
    return _summary(spec, plan, pipeline)


def stats(self: Task, job: str, ops: list[Any], stage: int, tile_json: dict[str, Any]) -> dict[str, Any]:
    tile = TileSpec.from_json(tile_json)
    app, keys = _app(self), JobKeys(job)
    with reported(app, keys, f"histogram of {tile.label}"):
        piece = _windowed(self, app, keys, tile) if tile.window else None
        app.store.started(keys, f"stats{stage}-{tile.index}", str(self.request.hostname))
        pipeline = Pipeline.from_json(ops)
        step = pipeline.global_steps[stage]
        known = _histograms(app, keys, pipeline, tile.frame, stage)
        piece = _piece(app, keys, tile) if piece is None else piece
        out, _ = pipeline.run_tile(piece, tile.cut, tile.box, tile.size, known, step)
        histogram = pipeline.steps[step].measure(out)
        app.store.put(keys, keys.partial(stage, tile.index), json.dumps(histogram).encode())
    return {"tile": tile.index, "stage": stage, "pixels": sum(histogram)}


def reduce(self: Task, spec_json: dict[str, Any], stage: int) -> Any:
    spec = JobSpec.from_json(spec_json)
    app, keys = _app(self), JobKeys(spec.job)
    with reported(app, keys, f"reduce of stage {stage + 1}"):
        plan = Plan.from_json(_load_json(app, keys, keys.plan))
        pipeline = Pipeline.from_json(spec.ops)
        layout = job_tiles(spec, plan, pipeline.halo)
        _await(self, app, keys, [keys.partial(stage, tile.index) for tile in layout])
        by_frame: list[list[Histogram]] = [[] for _ in plan.sizes]
        for tile in layout:
            by_frame[tile.frame].append(_load_json(app, keys, keys.partial(stage, tile.index)))
        whole = [add_histograms(parts) for parts in by_frame]
        app.store.put(keys, keys.statistic(stage), json.dumps(whole).encode())
        next_stage(app, spec, plan, stage + 1).apply_async(add_to_parent=False)
    return {"stage": stage + 1, "tiles": sum(len(parts) for parts in by_frame)}


def edit(self: Task, job: str, ops: list[Any], tile_json: dict[str, Any]) -> dict[str, Any]:
    tile = TileSpec.from_json(tile_json)
    app, keys = _app(self), JobKeys(job)
    with reported(app, keys, f"edit of {tile.label} [{ops_text(ops)}]"):
        piece = _windowed(self, app, keys, tile) if tile.window else None
        if tile.window and piece is None:  # run again after its result was drained: nothing to do
            return {"tile": tile.index, "box": list(tile.box), "skipped": "finished already"}
        app.store.started(keys, f"edit-{tile.index}", str(self.request.hostname))
        pipeline = Pipeline.from_json(ops)
        known = _histograms(app, keys, pipeline, tile.frame, len(pipeline.global_steps))
        piece = _piece(app, keys, tile) if piece is None else piece
        out, dest = pipeline.run_tile(piece, tile.cut, tile.box, tile.size, known)
        core = encode_core(out) if tile.stream else pack_raw(out, {"box": list(dest)})
        app.store.put(keys, keys.edited(tile.index), core)
        app.store.tile_done(keys, tile.index)
        if tile.window or not (tile.region or tile.decode):  # its input, stored under its key:
            app.store.drop(keys, keys.tile(tile.index))  # no later task reads it (a re-run finds it gone)
    return {"tile": tile.index, "box": list(dest)}


def merge(self: Task, spec_json: dict[str, Any]) -> Any:
    spec = JobSpec.from_json(spec_json)
    app, keys = _app(self), JobKeys(spec.job)
    with reported(app, keys, "merge"):
        plan = Plan.from_json(_load_json(app, keys, keys.plan))
        layout = job_tiles(spec, plan, Pipeline.from_json(spec.ops).halo)
        if spec.window:  # the client drains the edited tiles as they finish: count them instead
            _await_count(self, app, keys, len(layout))
        else:
            _await(self, app, keys, [keys.edited(tile.index) for tile in layout])
        if plan.stream:  # the client writes the file from the tiles: tell it how
            manifest = merge_stream(plan, layout, source_header(app, keys, plan, spec.window))
            app.store.notify(keys, {"ok": True, "stream": manifest})
            return {"size": manifest["size"], "mode": plan.mode, "format": "TIFF", "written": "by the client"}
        return merge_frames(app, keys, spec, plan)


def batch(self: Task, batch: str, ops: list[Any], format: str | None) -> dict[str, Any]:
    """Several small images in one task; see :mod:`tilechord.worker.batch`."""
    keys = JobKeys(batch)
    started = time.perf_counter()
    what = f"batch {batch} [{ops_text(ops)}]"
    try:
        total, failed = run_batch(_app(self), keys, ops, format, what)
    except JobGone:
        logger.info("%s skipped, the batch was cancelled or expired", what)
        raise Ignore() from None
    except RedisUnreachable as exc:  # a re-run batch reports again; the client counts each image once
        logger.warning("%s handed back, to run again once Redis answers: %s", what, exc)
        raise Reject(str(exc), requeue=True) from None
    logger.info(
        "batch %s: %d images [%s], %d failed, done in %.3f s",
        batch, total, ops_text(ops), failed, time.perf_counter() - started,
    )  # fmt: skip
    return {"images": total, "failed": failed}


#: Every task, by its name (part of the message format: see :mod:`tilechord.worker.specs`).
TASKS: dict[str, Callable[..., Any]] = {
    SPLIT: split,
    STATS: stats,
    REDUCE: reduce,
    EDIT: edit,
    MERGE: merge,
    BATCH: batch,
}


def bind(app: TilechordCelery) -> None:
    """Define tilechord's tasks on *app*: an app factory, so each app has its own.

    ``shared=False``: a shared task would reach every app made later in the process.
    ``throws``: tilechord's own errors are expected failures, logged without a traceback.
    ``max_retries=None``: a merge waiting for its tiles, or an edit for its piece, retries
    until the job ends (the job's liveness bounds it); ``retry(max_retries=None)`` alone
    means Celery's default of 3, which failed such waits after a second and a half.
    """
    for name, func in TASKS.items():
        app.task(name=name, bind=True, throws=(TilechordError,), shared=False, max_retries=None)(func)


def _piece(app: TilechordCelery, keys: JobKeys, tile: TileSpec) -> Image.Image:
    """A tile's input pixels: stored raw by the split, or cut here from the decoded source."""
    if tile.region:
        return read_piece(app, keys, tile)
    if tile.decode:
        image = decode(app.store.get_pixels(keys, keys.source), app.tilechord_settings.max_pixels)
        return image.crop(tile.cut)
    return unpack_raw(app.store.get_pixels(keys, keys.tile(tile.index)))[0]


def _cut(
    app: TilechordCelery, keys: JobKeys, spec: JobSpec, pipeline: Pipeline, source: Data
) -> Plan | Image.Image:
    """Lay the job out and store what its tiles need; for a job of one tile, its image."""
    max_pixels = app.tilechord_settings.max_pixels
    if spec.frames == 1 and not is_raw(source):
        info = inspect_source(source, max_pixels)  # the header only
        in_place = Plan(sizes=(info.size,), decode=True, **_output(spec, pipeline, info.mode))
        tiles_in_all = tile_count(spec, in_place.sizes)
        if 1 < tiles_in_all <= DECODE_IN_PLACE_TILES and info.format in DECODE_IN_PLACE_FORMATS:
            app.store.put(keys, keys.plan, json.dumps(in_place.to_json()).encode())
            return in_place
        if tiles_in_all > 1 and info.frames == 1:  # a PNG: cut as it decodes, holding no image
            fed = info.size[0] * info.size[1] > FED_ABOVE
            plan = Plan((info.size,), fed=fed, **_output(spec, pipeline, info.mode))
            if _feed(app, keys, spec, plan, source):
                return plan
    frames, timing = decode_frames(source, max_pixels, spec.frames)
    extra = _output(spec, pipeline, frames[0].mode)
    plan = Plan(tuple(f.size for f in frames), timing.to_json(), raw=is_raw(source), **extra)
    if tile_count(spec, plan.sizes) == 1:
        return frames[0]
    for tile in job_tiles(spec, plan, pipeline.halo):
        app.store.put(keys, keys.tile(tile.index), pack_raw(frames[tile.frame].crop(tile.cut)))
    app.store.put(keys, keys.plan, json.dumps(plan.to_json()).encode())
    return plan


#: A PNG over this many pixels has its chord sent before its tiles (a *fed* plan): its
#: decode takes long enough (a second from about 12 MP) for the edits to gain by starting
#: during it.  A smaller one stores every tile first, then sends the chord, so that damage
#: found by its decode fails the job before any edit has run.
FED_ABOVE = 12 * 2**20


def _feed(app: TilechordCelery, keys: JobKeys, spec: JobSpec, plan: Plan, source: Data) -> bool:
    """Store each tile as a PNG is decoded from the top; for a fed plan, send the chord first.

    The split holds two rows of tiles, never the image.  A fed plan's edits start while the
    split still decodes (they wait for their tiles: see :mod:`tilechord.worker.window`);
    its plan is stored after the chord is sent, so a split run again (its worker lost)
    that finds it sends no second chord, and stores only the tiles not edited yet.
    ``False`` (nothing stored or sent) for a PNG that does not decode strip by strip.
    """
    layout = job_tiles(spec, plan, Pipeline.from_json(spec.ops).halo)
    cut = strip_tiles(source, layout, app.tilechord_settings.max_pixels)
    if cut is None:
        return False
    if plan.fed:
        app.store.beat(keys, FEEDER_TTL)  # before any edit can look for its tile
        if app.store.missing(keys, [keys.plan]):
            next_stage(app, spec, plan, 0).apply_async(add_to_parent=False)
            app.store.put(keys, keys.plan, json.dumps(plan.to_json()).encode())
    finished = app.store.finished_tiles(keys) if plan.fed else set()
    for tile, piece in cut:
        if plan.fed:
            app.store.beat(keys, FEEDER_TTL)
        if tile.index not in finished:
            app.store.put(keys, keys.tile(tile.index), pack_raw(piece))
    if not plan.fed:  # the split sends the chord now that every tile is stored
        app.store.put(keys, keys.plan, json.dumps(plan.to_json()).encode())
    return True


def _output(spec: JobSpec, pipeline: Pipeline, mode: str) -> dict[str, Any]:
    """A plan's fields for a streamed output: the flag, and the mode its writer needs."""
    return {"stream": True, "mode": pipeline.check_mode(mode)} if spec.stream else {}


def _region_plan(app: TilechordCelery, keys: JobKeys, spec: JobSpec, pipeline: Pipeline) -> Plan | None:
    """The plan of a source whose tiles read their own regions, from its header alone: a
    single-frame TIFF, or a raw image (``process_image``), whose tiles read their rows.

    ``None`` for anything else (and for a one-tile job, which runs whole in the split).
    """
    if spec.frames != 1:
        return None
    if not spec.window:
        read, length = app.store.reader(keys, keys.source)
    else:  # the skeleton, read once: a TIFF's is packed ranges, a PNG's is not
        skeleton = app.store.get_pixels(keys, keys.source)
        if not is_packed(skeleton):
            return None
        reader = RangeReader(skeleton)
        read, length = reader.read, reader.length
    head = read(0, min(RAW_HEAD, length))
    if is_raw(head):  # process_image: each tile reads its rows of the stored pixels
        raw = raw_layout(head)
        sizes, mode, raw_source = (raw.size,), str(raw.header["mode"]), True
        if raw.size[0] * raw.size[1] > app.tilechord_settings.max_pixels:
            return None  # the whole-image path refuses it, as it always did
    else:
        layout = region_layout(read, length)
        if layout is None:
            return None
        sizes, mode, raw_source = ((layout.width, layout.height),), layout.mode, False
    if tile_count(spec, sizes) == 1:
        return None
    plan = Plan(sizes, region=True, raw=raw_source, **_output(spec, pipeline, mode))
    app.store.put(keys, keys.plan, json.dumps(plan.to_json()).encode())
    return plan


def _png_window_plan(app: TilechordCelery, keys: JobKeys, spec: JobSpec, pipeline: Pipeline) -> Plan:
    """The plan of a PNG the client sends tile by tile (:mod:`tilechord.worker.window`)."""
    header = open_checked(app.store.get_pixels(keys, keys.source), app.tilechord_settings.max_pixels)
    plan = Plan((header.size,), **_output(spec, pipeline, header.mode))
    app.store.put(keys, keys.plan, json.dumps(plan.to_json()).encode())
    return plan


def _summary(spec: JobSpec, plan: Plan, pipeline: Pipeline) -> dict[str, Any]:
    """The split's result as Flower shows it: how the job was laid out."""
    return {
        "tiles": tile_count(spec, plan.sizes),
        "frames": plan.frames,
        "size": list(plan.sizes[0]),
        "halo": pipeline.halo,
        "stages": len(pipeline.global_steps) + 1,
        "decode": "by region in each tile"
        if plan.region
        else "in each tile"
        if plan.decode
        else "in the split",
        "output": "streamed" if plan.stream else "whole",
    }


#: Seconds between a merge's (or reduce's) looks for tiles not stored yet.
AWAIT_EVERY = 0.5


def _await(task: Task, app: TilechordCelery, keys: JobKeys, names: list[str]) -> None:
    """Go on only once every key of *names* is stored; until then, run again shortly.

    A chord counts finished tasks, not tiles: a tile that ran twice (its worker froze, its
    message went to another, then it woke and finished too) counts twice, and the chord
    fires its merge while another tile still runs.  The merge then waits, as a retry with
    a countdown rather than a sleep, so that it holds no pool process the missing tile
    may need.  The job's timeout bounds the wait: a gone job ends it (:class:`JobGone`).
    """
    missing = app.store.missing(keys, names)
    if missing:
        logger.info(
            "job %s: %d tile(s) not stored yet, looking again in %.1f s",
            keys.job_id,
            len(missing),
            AWAIT_EVERY,
        )
        raise task.retry(countdown=AWAIT_EVERY)


def _await_count(task: Task, app: TilechordCelery, keys: JobKeys, tiles: int) -> None:
    """:func:`_await` for a windowed job, whose edited tiles the client takes as they finish."""
    done = app.store.tiles_done(keys)
    if done < tiles:
        if not app.store.is_live(keys):
            raise JobGone(f"job {keys.job_id} was cancelled or expired")
        logger.info("job %s: %d tile(s) not finished yet, looking again in %.1f s", keys.job_id,
                    tiles - done, AWAIT_EVERY)  # fmt: skip
        raise task.retry(countdown=AWAIT_EVERY)


#: Seconds before an edit whose piece is not sent yet runs again (:mod:`tilechord.worker.window`).
PIECE_RETRY = 0.2


def _windowed(task: Task, app: TilechordCelery, keys: JobKeys, tile: TileSpec) -> Image.Image | None:
    """A windowed tile's input; ``None`` if it is finished already; a retry while it is not sent."""
    try:
        return read_windowed(app, keys, tile)
    except Waiting:
        raise task.retry(countdown=PIECE_RETRY) from None


def _load_json(app: TilechordCelery, keys: JobKeys, key: str) -> Any:
    return json.loads(app.store.get(keys, key))


def _histograms(
    app: TilechordCelery, keys: JobKeys, pipeline: Pipeline, frame: int, stages: int
) -> dict[int, Histogram]:
    """The whole image's histograms of the first *stages* global steps, for one frame."""
    steps = pipeline.global_steps
    return {steps[s]: _load_json(app, keys, keys.statistic(s))[frame] for s in range(stages)}
