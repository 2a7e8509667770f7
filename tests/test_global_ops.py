"""Global operations (contrast, autocontrast, equalize) through the real workers: exact across tiles.

Each tile measures a histogram, the job adds them up, each tile applies the operation
with the sum (one step alone, as pure functions: ``tests/unit/test_global_steps.py``).
The reference is always Pillow's call on the whole image.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from images import encoded, photo, quadrants
from PIL import Image, ImageSequence
from reference import pillow, reference, reference_or_none, same_image

from tilechord import Client, UnsupportedMode

# ------------------------------------------------------------ through the real workers


def test_autocontrast_and_equalize_on_a_4x4_grid_give_the_whole_image_answer(
    client: Client, no_leftovers: None
) -> None:
    image = quadrants()
    for spec in ("autocontrast:cutoff=2", "equalize"):
        out = client.process_image(image, [spec], grid=(4, 4))
        assert same_image(out, pillow(image, spec)), spec


MIXED = (
    "gaussian_blur:radius=3,autocontrast:cutoff=2,sharpen,equalize",
    "rotate:angle=90,contrast:factor=1.5,median:size=3,mirror,equalize",
    "equalize,box_blur:radius=2,contrast:factor=0.6",
)


def _steps(text: str) -> list[str]:
    """Split 'a:x=1,b,c:y=2' into specs (a parameter never starts a new step)."""
    steps: list[str] = []
    for item in text.split(","):
        if "=" in item and ":" not in item and steps:
            steps[-1] += "," + item
        else:
            steps.append(item)
    return steps


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (3, 1), (5, 5)], ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
@pytest.mark.parametrize("pipeline", MIXED)
def test_pipelines_mixing_global_neighbourhood_and_geometry_steps_equal_pillow(
    client: Client, pipeline: str, mode: str, grid: tuple[int, int], no_leftovers: None
) -> None:
    image = photo(97, 71, mode=mode, seed=5)
    ops = _steps(pipeline)
    expected = reference_or_none(image, ops)
    if expected is None:
        with pytest.raises(UnsupportedMode):
            client.process_image(image, ops, grid=grid)
        return
    assert same_image(client.process_image(image, ops, grid=grid), expected)


def test_global_steps_run_as_named_stats_and_reduce_stages(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    image = photo(80, 60, seed=2)
    job = client.submit(encoded(image, "PNG"), ["autocontrast", "sharpen", "equalize"], grid=(2, 2))
    job.get(timeout=60)
    tasks = [m["task"] for m in messages() if m["root"] == job.id]
    assert tasks.count("tilechord.split") == 1
    assert tasks.count("tilechord.stats") == 2 * 4  # two global steps, four tiles
    assert tasks.count("tilechord.reduce") == 2
    assert tasks.count("tilechord.edit") == 4
    assert tasks.count("tilechord.merge") == 1


def test_a_pipeline_without_global_steps_keeps_a_single_chord(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    image = photo(80, 60, seed=2)
    job = client.submit(encoded(image, "PNG"), ["gaussian_blur:radius=2", "sharpen"], grid=(2, 2))
    job.get(timeout=60)
    tasks = sorted(m["task"] for m in messages() if m["root"] == job.id)
    assert tasks == ["tilechord.edit"] * 4 + ["tilechord.merge", "tilechord.split"]


def test_each_frame_of_an_animation_gets_its_own_histogram(client: Client, no_leftovers: None) -> None:
    frames = [quadrants(64, 48).point(lambda v, k=k: v // (k + 1)) for k in range(3)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[80, 120, 160], loop=0)
    out = Image.open(io.BytesIO(client.process(data, ["convert:mode=RGB", "autocontrast"], grid=(2, 2))))
    source = Image.open(io.BytesIO(data))
    expected = [reference(f, ["convert:mode=RGB", "autocontrast"]) for f in ImageSequence.Iterator(source)]
    reference_gif = Image.open(
        io.BytesIO(
            encoded(
                expected[0], "GIF", save_all=True, append_images=expected[1:], duration=[80, 120, 160], loop=0
            )
        )
    )
    got = [f.convert("RGB").tobytes() for f in ImageSequence.Iterator(out)]
    want = [f.convert("RGB").tobytes() for f in ImageSequence.Iterator(reference_gif)]
    assert len(got) == 3
    assert got == want
    assert [f.info.get("duration") for f in ImageSequence.Iterator(out)] == [80, 120, 160]
