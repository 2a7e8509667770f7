"""Typed specs: what a task message carries, and the task names.

A message's arguments are json (no pickle anywhere), so each spec is a frozen dataclass
with ``to_json`` / ``from_json`` that give and take exactly the dicts the wire has always
carried: a worker of this version reads a message of the last, and Flower shows the same
arguments.  Pixels never travel in a spec, only keys' parts and geometry (a few hundred
bytes whatever the image size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SPLIT",
    "STATS",
    "REDUCE",
    "EDIT",
    "MERGE",
    "BATCH",
    "TASK_NAMES",
    "JobSpec",
    "TileSpec",
    "Plan",
    "Box",
    "Size",
]

#: The Celery task names: part of the message format, and what Flower and worker logs show.
SPLIT = "tilechord.split"
STATS = "tilechord.stats"
REDUCE = "tilechord.reduce"
EDIT = "tilechord.edit"
MERGE = "tilechord.merge"
BATCH = "tilechord.batch"
TASK_NAMES = (SPLIT, STATS, REDUCE, EDIT, MERGE, BATCH)

Box = tuple[int, int, int, int]
Size = tuple[int, int]


def _box(values: Any) -> Box:
    a, b, c, d = (int(v) for v in values)
    return (a, b, c, d)


def _size(values: Any) -> Size:
    width, height = (int(v) for v in values)
    return (width, height)


@dataclass(frozen=True)
class JobSpec:
    """One job, as the client sends it to the split (and the split to later stages)."""

    job: str
    ops: list[Any]  # the pipeline's json (Pipeline.to_json): read by workers that know the operations
    grid: tuple[int, int]  # (cols, rows), already clipped to the image
    format: str | None  # the output's Pillow format; None for a raw result (process_image)
    frames: int = 1
    stream: bool = False  # a TIFF written as the tiles come (tilechord.worker.stream)
    window: bool = False  # the client sends the source as tiles need it (tilechord.worker.window)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job": self.job,
            "ops": self.ops,
            "grid": list(self.grid),
            "format": self.format,
            "frames": self.frames,
        }
        for name in ("stream", "window"):
            if getattr(self, name):
                out[name] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        cols, rows = data["grid"]
        return cls(data["job"], list(data["ops"]), (int(cols), int(rows)), data["format"],
                   int(data.get("frames", 1)), bool(data.get("stream", False)),
                   bool(data.get("window", False)))  # fmt: skip


@dataclass(frozen=True)
class TileSpec:
    """One tile's task: where its input is cut (with halo), its core, and its frame."""

    index: int  # numbered across frames, the same in every task of the job
    frame: int
    cut: Box  # the region read from the frame: the core plus the halo, clipped to the frame
    box: Box  # the core this tile contributes to the output, in the frame's coordinates
    size: Size  # the frame's size
    label: str  # "tile 2/6 at (120, 0) 120x120", for logs and Flower
    decode: bool = False  # True: the tile decodes the source itself (a small JPEG grid)
    region: bool = False  # True: the tile reads its cut box from the TIFF source by region
    stream: bool = False  # True: the edited core is stored as compressed TIFF tiles
    window: bool = False  # True: its input may come after it starts: wait for it (worker.window)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "frame": self.frame,
            "cut": list(self.cut),
            "box": list(self.box),
            "size": list(self.size),
            "label": self.label,
            "decode": self.decode,
        }
        for name in ("region", "stream", "window"):
            if getattr(self, name):
                out[name] = True
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TileSpec:
        return cls(
            index=int(data["index"]),
            frame=int(data["frame"]),
            cut=_box(data["cut"]),
            box=_box(data["box"]),
            size=_size(data["size"]),
            label=str(data["label"]),
            decode=bool(data.get("decode", False)),
            region=bool(data.get("region", False)),
            stream=bool(data.get("stream", False)),
            window=bool(data.get("window", False)),
        )


@dataclass(frozen=True)
class Plan:
    """The job's layout, stored once by the split under ``tilechord:<job>:plan``."""

    sizes: tuple[Size, ...]  # each frame's size
    timing: Mapping[str, Any] = field(default_factory=dict)  # an animation's durations and loop
    decode: bool = False  # each tile decodes the source (no raw tiles stored)
    raw: bool = False  # the source is tilechord's raw format: no metadata to carry over
    region: bool = False  # each tile reads its region of the TIFF source (no raw tiles stored)
    stream: bool = False  # the output TIFF is written as the tiles come, from aligned tiles
    mode: str | None = None  # the output's mode, for a streamed output's writer
    fed: bool = False  # the split sends the chord first, then stores tiles as it decodes them

    @property
    def frames(self) -> int:
        return len(self.sizes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sizes": [list(s) for s in self.sizes], "timing": dict(self.timing)}
        if self.decode:
            out["decode"] = True
        else:
            out["raw"] = self.raw
        for name in ("region", "stream", "fed"):
            if getattr(self, name):
                out[name] = True
        if self.mode is not None:
            out["mode"] = self.mode
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            sizes=tuple(_size(s) for s in data["sizes"]),
            timing=dict(data.get("timing") or {}),
            decode=bool(data.get("decode", False)),
            raw=bool(data.get("raw", False)),
            region=bool(data.get("region", False)),
            stream=bool(data.get("stream", False)),
            mode=data.get("mode"),
            fed=bool(data.get("fed", False)),
        )
