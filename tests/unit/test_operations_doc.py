"""docs/operations.md is generated from the registry; these keep it and the code in step.

Pure: Pillow on tiny images, no Redis, no processes.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from tilechord.ops import Operation, table

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
REGENERATE = "python -m tilechord.ops.table > docs/operations.md"


def noise(mode: str, seed: int = 0) -> Image.Image:
    """A 9x7 image of seeded random bytes: any wrong call shows on it."""
    rng = random.Random(f"{mode} #{seed}")
    size = (9, 7)
    return Image.frombytes(mode, size, rng.randbytes(len(Image.new(mode, size).tobytes())))


def reference(op: Operation, image: Image.Image, params: dict[str, Any]) -> Image.Image:
    """Run the operation's documented Pillow call, as written, on *image*."""
    names = {"Image": Image, "ImageEnhance": ImageEnhance, "ImageFilter": ImageFilter, "ImageOps": ImageOps}
    result = eval(op.pillow, names, {"im": image, **params})  # the documented text itself
    assert isinstance(result, Image.Image)
    return result


def test_the_document_is_what_the_code_generates() -> None:
    expected = table.document()
    actual = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert actual == expected, f"docs/operations.md is out of date; regenerate it with: {REGENERATE}"


def test_every_builtin_operation_names_its_pillow_reference() -> None:
    ops = table.builtins()
    assert len(ops) >= 29
    missing = [op.name for op in ops if not op.pillow.strip()]
    assert not missing, f"give these operations pillow=... in their @operation: {missing}"


def test_the_document_lists_every_builtin_and_no_plugin() -> None:
    text = table.document()
    for op in table.builtins():
        assert f"| `{op.name}" in text and f"`{op.pillow}`" in text
    assert "test_" not in text  # the test plugin's operations, if loaded, stay out


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("op", table.builtins(), ids=lambda op: op.name)
def test_each_pillow_reference_is_exactly_what_the_operation_does(op: Operation, mode: str) -> None:
    image = noise(mode)
    params = dict(op.bind({}).params)
    expected = reference(op, image.copy(), params)
    actual = op.func(image.copy(), **params)
    assert (actual.mode, actual.size) == (expected.mode, expected.size)
    assert actual.tobytes() == expected.tobytes()


def test_markdown_table_has_one_row_per_operation() -> None:
    lines = table.markdown_table().splitlines()
    assert lines[0] == "| operation | parameters | kind | reach | what it does |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    assert [line.split("`")[1] for line in lines[2:]] == [row[0] for row in table.rows()]
