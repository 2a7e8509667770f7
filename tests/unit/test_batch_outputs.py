"""A batch's output names, and map in the public API: pure (the batches run in tests/test_batch.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import tilechord
from tilechord.cli import plan_outputs, safe_name


@pytest.mark.parametrize(
    ("stem", "ext"),
    [
        ("..", ".png"),
        (".", ".png"),
        ("", ""),
        ("a/../../b", ".jpg"),
        ("x" * 400, ".png"),
        ("é" * 150, ".png"),
    ],
)
def test_safe_names_are_single_visible_components(stem: str, ext: str) -> None:
    name = safe_name(stem, ext)
    assert name not in ("", ".", "..") and "/" not in name and not name.startswith(".")
    assert len(name.encode()) <= 220
    root = Path("/srv/out")
    assert (root / name).parent == root


def test_an_output_never_takes_the_path_of_an_input(tmp_path: Path) -> None:
    inputs = [tmp_path / "a.png", tmp_path / "b.png"]
    assert [p.name for p in plan_outputs(inputs, tmp_path, None)] == ["a-2.png", "b-2.png"]


def test_module_level_map_is_exported() -> None:
    assert tilechord.map is tilechord.client.map
    for name in ("map", "MapResult", "MapProgress"):
        assert name in tilechord.__all__
