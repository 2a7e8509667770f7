"""The canvas: which tasks a job sends, with which ids and specs.

A job with no global operation is ``split -> chord(edit x N) -> merge``.  Each global
operation adds a stage before the edits, ``chord(stats x N) -> reduce``.  Every task has
an id of its own derived from the job's (``<job>-edit-3``, ``<job>-merge`` ...), so
Flower lists every one and the client finds each from the job id.  The split sends the
next stage rather than ``Task.replace``-ing itself, which would hand its id on to the
merge (celery/celery#7596) and hide the split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import chord, group

from ..imaging import Grid, tiles
from ..imaging.tiffout import TILE as STREAM_TILE
from ..ops import Pipeline
from .keys import JobKeys
from .specs import EDIT, MERGE, REDUCE, SPLIT, STATS, JobSpec, Plan, TileSpec

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = [
    "DECODE_IN_PLACE_FORMATS",
    "DECODE_IN_PLACE_TILES",
    "job_tiles",
    "next_stage",
    "ops_text",
    "split_signature",
    "tile_count",
]

#: A single-frame JPEG cut into this many tiles or fewer is decoded by each tile's task
#: itself: decoding a JPEG costs less than the split storing its raw pixels in Redis and
#: every tile reading them back (``scripts/bench.py`` shows the difference).
DECODE_IN_PLACE_TILES = 4
DECODE_IN_PLACE_FORMATS = frozenset({"JPEG"})


def clip(text: str) -> str:
    """Keep log lines and Flower's argument column readable."""
    return text if len(text) <= 200 else text[:197] + "..."


def ops_text(ops: list[Any]) -> str:
    """A pipeline's json as a readable line for logs, without needing its operations."""
    steps = [
        str(name) + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")
        for name, params in ops
    ]
    return clip(" | ".join(steps) or "identity")


def _expiry(app: TilechordCelery) -> float:
    """Seconds a stage's messages stay runnable: the job timeout, after which no client waits.

    A message that waited that long in the queue (every worker busy or gone) is dropped by
    the worker that finally receives it, instead of editing a tile nobody wants.
    """
    return float(app.tilechord_settings.job_timeout)


def split_signature(app: TilechordCelery, spec: JobSpec, describe: str) -> Any:
    """The job's first task, with the job id as its task id."""
    return app.tasks[SPLIT].si(spec.to_json()).set(task_id=spec.job, argsrepr=f"job {spec.job}: {describe}")


def job_tiles(spec: JobSpec, plan: Plan, halo: int) -> list[TileSpec]:
    """Every tile of every frame, numbered across frames: the same list in every task.

    A streamed output's tiles are aligned to its TIFF tiles (:mod:`tilechord.worker.stream`).
    """
    grid = Grid(*spec.grid)
    frames = plan.frames
    align = STREAM_TILE if spec.stream else None
    out: list[TileSpec] = []
    for frame, (width, height) in enumerate(plan.sizes):
        for tile in tiles(width, height, grid, halo, align):
            label = tile.describe() if frames == 1 else f"frame {frame + 1}/{frames}, {tile.describe()}"
            where = (frame, tile.cut, tile.box, (width, height), label)
            out.append(
                TileSpec(len(out), *where, plan.decode, plan.region, spec.stream, spec.window or plan.fed)
            )
    return out


def tile_count(spec: JobSpec, sizes: tuple[tuple[int, int], ...]) -> int:
    """Tiles in all, the grid clipped to each frame as :func:`job_tiles` clips it."""
    grid = Grid(*spec.grid)
    if spec.stream:
        return sum(len(tiles(w, h, grid, 0, STREAM_TILE)) for w, h in sizes)
    return sum(clipped.cols * clipped.rows for clipped in (grid.clip(w, h) for w, h in sizes))


def next_stage(app: TilechordCelery, spec: JobSpec, plan: Plan, stage: int) -> Any:
    """The chord after *stage* reduces: the next global step's stats, or the edits and merge."""
    pipeline = Pipeline.from_json(spec.ops)
    parts = job_tiles(spec, plan, pipeline.halo)
    if stage < len(pipeline.global_steps):
        return _stats_stage(app, spec, pipeline, parts, stage)
    keys = JobKeys(spec.job)
    short = clip(str(pipeline))
    expires = _expiry(app)
    header = group(
        app.tasks[EDIT]
        .si(spec.job, spec.ops, tile.to_json())
        .set(
            task_id=keys.task_id("edit", tile.index),
            argsrepr=f"job {spec.job}: {tile.label} [{short}]",
            expires=expires,
        )
        for tile in parts
    )
    sizes = [pipeline.output_size(size) for size in plan.sizes]
    frames = f"{len(sizes)} frames of " if len(sizes) > 1 else ""
    merged = f"{frames}{sizes[0][0]}x{sizes[0][1]} {spec.format or 'raw'}"
    body = (
        app.tasks[MERGE]
        .si(spec.to_json())
        .set(
            task_id=keys.task_id("merge"),
            argsrepr=f"job {spec.job}: {len(parts)} tiles -> {merged}",
            expires=expires,
        )
    )
    return chord(header, body)


def _stats_stage(
    app: TilechordCelery, spec: JobSpec, pipeline: Pipeline, parts: list[TileSpec], stage: int
) -> Any:
    """``chord(stats x N) -> reduce`` for the global step of *stage*."""
    keys = JobKeys(spec.job)
    short = clip(str(pipeline))
    step = pipeline.steps[pipeline.global_steps[stage]]
    expires = _expiry(app)
    header = group(
        app.tasks[STATS]
        .si(spec.job, spec.ops, stage, tile.to_json())
        .set(
            task_id=keys.task_id(f"stats{stage}", tile.index),
            argsrepr=f"job {spec.job}: histogram for {step.spec}, {tile.label} [{short}]",
            expires=expires,
        )
        for tile in parts
    )
    body = (
        app.tasks[REDUCE]
        .si(spec.to_json(), stage)
        .set(
            task_id=keys.task_id(f"reduce{stage}"),
            argsrepr=f"job {spec.job}: add {len(parts)} histograms for {step.spec}",
            expires=expires,
        )
    )
    return chord(header, body)
