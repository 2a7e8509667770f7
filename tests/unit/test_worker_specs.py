"""Typed specs give and take exactly the json that task messages have always carried."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tilechord.imaging import Grid, tiles
from tilechord.worker.canvas import job_tiles, ops_text, tile_count
from tilechord.worker.specs import TASK_NAMES, JobSpec, Plan, TileSpec

# A message of the layout before the typed specs, as a worker of that version sent it.
OLD_JOB = {"job": "abc123", "ops": [["gaussian_blur", {"radius": 3.0}]], "grid": [2, 1], "format": "PNG",
           "frames": 1}  # fmt: skip
OLD_TILE = {"index": 1, "frame": 0, "cut": [40, 0, 100, 60], "box": [50, 0, 100, 60], "size": [100, 60],
            "label": "tile 2/2 at (50, 0) 50x60", "decode": False}  # fmt: skip


def test_a_job_spec_reads_and_writes_the_wire_format_unchanged() -> None:
    spec = JobSpec.from_json(OLD_JOB)
    assert spec.grid == (2, 1) and spec.format == "PNG"
    assert json.loads(json.dumps(spec.to_json())) == OLD_JOB


def test_a_tile_spec_reads_and_writes_the_wire_format_unchanged() -> None:
    tile = TileSpec.from_json(OLD_TILE)
    assert tile.cut == (40, 0, 100, 60) and tile.size == (100, 60)
    assert json.loads(json.dumps(tile.to_json())) == OLD_TILE


def test_a_stored_plan_keeps_its_keys() -> None:
    split = {"sizes": [[100, 60], [100, 60]], "timing": {"durations": [40, 60], "loop": 0}, "raw": False}
    in_place = {"sizes": [[100, 60]], "timing": {}, "decode": True}
    for data in (split, in_place):
        assert json.loads(json.dumps(Plan.from_json(data).to_json())) == data


def test_task_names_are_the_public_ones() -> None:
    assert (
        tuple(f"tilechord.{n}" for n in ("split", "stats", "reduce", "edit", "merge", "batch")) == TASK_NAMES
    )


@given(
    cols=st.integers(1, 6), rows=st.integers(1, 6), halo=st.integers(0, 20),
    sizes=st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=3),
)  # fmt: skip
def test_job_tiles_cover_every_frame_with_the_geometry_of_tiles(
    cols: int, rows: int, halo: int, sizes: list[tuple[int, int]]
) -> None:
    spec = JobSpec("job", [], (cols, rows), None, len(sizes))
    plan = Plan(tuple(sizes))
    layout = job_tiles(spec, plan, halo)
    assert [t.index for t in layout] == list(range(len(layout))) == list(range(tile_count(spec, plan.sizes)))
    expected = [
        (f, t.cut, t.box) for f, (w, h) in enumerate(sizes) for t in tiles(w, h, Grid(cols, rows), halo)
    ]
    assert [(t.frame, t.cut, t.box) for t in layout] == expected
    assert all(TileSpec.from_json(json.loads(json.dumps(t.to_json()))) == t for t in layout)


def test_a_pipeline_reads_as_one_line_in_logs() -> None:
    assert (
        ops_text([["grayscale", {}], ["gaussian_blur", {"radius": 4}]])
        == "grayscale | gaussian_blur:radius=4"
    )
    assert ops_text([]) == "identity"
    assert len(ops_text([["x" * 300, {}]])) == 200
