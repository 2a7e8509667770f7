"""The merge: the edited tiles joined into one image per frame, encoded, handed over.

Full-width strips of one frame (what ``grid="auto"`` cuts) are joined end to end from
their raw bytes, with no canvas; any other grid pastes each tile where its box says.
The result and the client's end notice are written in one transaction.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..imaging.decode import Timing, open_checked, open_file
from ..imaging.encode import encode_frames
from ..imaging.raw import StripJoiner, unpack_raw
from ..imaging.regions import ReadAtFile
from ..ops import Pipeline
from .canvas import job_tiles
from .keys import JobKeys
from .specs import JobSpec, Plan, TileSpec
from .window import source_reader

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = ["finish", "merge_frames", "source_header"]


def finish(
    app: TilechordCelery,
    keys: JobKeys,
    spec: JobSpec,
    frames: list[Image.Image],
    timing: Any,
    source: Image.Image | None,
    count_tile: bool = False,
) -> dict[str, Any]:
    """Encode the result, store it, and tell the waiting client; the task's summary.

    *source* is the source image as opened or decoded (its ``info`` and tables are all
    the encoder needs for the metadata), or ``None`` for a raw source, which has none.
    """
    original = source if source is not None and source.format else None
    data = encode_frames(frames, spec.format, original, Timing.from_json(timing))
    app.store.finish(keys, data, count_tile)
    return {
        "size": list(frames[0].size),
        "mode": frames[0].mode,
        "frames": len(frames),
        "format": spec.format or "raw",
        "bytes": len(data),
    }


def merge_frames(app: TilechordCelery, keys: JobKeys, spec: JobSpec, plan: Plan) -> dict[str, Any]:
    """What ``tilechord.merge`` does: join or paste the edited tiles, then :func:`finish`."""
    pipeline = Pipeline.from_json(spec.ops)
    layout = job_tiles(spec, plan, pipeline.halo)
    frames = _strips(app, keys, pipeline, layout) or _pasted(app, keys, pipeline, layout, plan)
    return finish(app, keys, spec, frames, plan.timing, source_header(app, keys, plan))


def source_header(
    app: TilechordCelery, keys: JobKeys, plan: Plan, window: bool = False
) -> Image.Image | None:
    """The source opened again for its metadata, or ``None`` for a raw one (it has none).

    tilechord's pixel limit, not Pillow's: over 179 MP, ``Image.open`` alone refuses.  A
    source read by region is opened through a reader of its bytes, fetching its header only.
    """
    settings = app.tilechord_settings
    if plan.raw:
        return None
    if plan.region:
        read, length = source_reader(app, keys, window)
        fp = io.BufferedReader(ReadAtFile(read, length), buffer_size=1 << 16)
        return open_file(fp, max(settings.max_pixels, settings.max_stream_pixels))
    return open_checked(app.store.get_pixels(keys, keys.source), settings.max_pixels)


def _strips(
    app: TilechordCelery, keys: JobKeys, pipeline: Pipeline, layout: list[TileSpec]
) -> list[Image.Image]:
    """A single frame cut in full-width strips (what ``grid="auto"`` gives): joined, not pasted.

    The strips are read one at a time, top to bottom, each copied into the one buffer of
    the output (:class:`~tilechord.imaging.raw.StripJoiner`): the output once and one tile
    are the most held.  None if the edited tiles are no such strips.
    """
    if len(layout) < 2 or any(tile.frame or tile.box[0] for tile in layout):
        return []
    joiner = StripJoiner(pipeline.output_size(layout[0].size))
    for tile in sorted(layout, key=lambda t: t.box[1]):
        if not joiner.add(app.store.get_pixels(keys, keys.edited(tile.index))):
            return []
    joined = joiner.image()
    return [] if joined is None else [joined]


def _pasted(
    app: TilechordCelery, keys: JobKeys, pipeline: Pipeline, layout: list[TileSpec], plan: Plan
) -> list[Image.Image]:
    """Each frame's edited tiles pasted onto a canvas of the output's size, read one at a time."""
    canvases: list[Image.Image | None] = [None] * plan.frames
    for tile in layout:
        piece, extra = unpack_raw(app.store.get_pixels(keys, keys.edited(tile.index)))
        canvas = canvases[tile.frame]
        if canvas is None:
            canvas = canvases[tile.frame] = _blank_like(piece, pipeline.output_size(tile.size))
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
