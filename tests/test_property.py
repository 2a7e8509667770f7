"""Property: any pipeline, on any image, on any grid, through the real workers, equals Pillow.

Hypothesis draws an image (mode, size from 1 to 300, random content), a pipeline of one
to four registered operations with parameters within their bounds, and a grid up to 5x5
(``support/strategies.py``; the strategy itself is checked in ``unit/test_strategies.py``).
The job runs on the session's real Celery workers over Redis; the expected result is the
chain of Pillow calls of ``../shared/ops-reference.md`` (``support/reference.py``, written
independently of tilechord's own operation functions), on the whole image.  Same mode,
size, bytes, palette and transparency.  Where Pillow refuses a step for the image's mode,
tilechord must refuse the job before running it, with its typed error.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from PIL import Image
from reference import reference_or_none
from strategies import Case, cases

from tilechord import Client
from tilechord.errors import InvalidParameter, UnsupportedMode


def assert_identical(actual: Image.Image, expected: Image.Image) -> None:
    assert (actual.mode, actual.size) == (expected.mode, expected.size)
    got, want = actual.tobytes(), expected.tobytes()
    if got != want:
        differ = [i for i, (x, y) in enumerate(zip(got, want, strict=True)) if x != y]
        row = len(want) // expected.height
        raise AssertionError(
            f"{len(differ)} of {len(want)} bytes differ; the first in row {differ[0] // row} "
            f"(byte {differ[0] % row} of {row})"
        )
    if expected.mode in ("P", "PA"):
        assert actual.getpalette() == expected.getpalette()
    assert actual.info.get("transparency") == expected.info.get("transparency")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: palette transparency as bytes
@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=cases())
@example(  # every tile a single pixel, geometry between neighbourhoods, the widest kernels
    case=Case(
        "RGB",
        5,
        3,
        seed=7,
        steps=(
            ("gaussian_blur", {"radius": 6.0}),
            ("rotate", {"angle": 90}),
            ("median", {"size": 5}),
            ("smooth_more", {}),
        ),
        grid=(5, 5),
    )
)
@example(  # a palette with transparency through geometry and a mode change
    case=Case(
        "P",
        300,
        1,
        seed=3,
        levels=3,
        transparency=2,
        steps=(
            ("flip", {}),
            ("rotate", {"angle": 270}),
            ("convert", {"mode": "RGBA"}),
            ("box_blur", {"radius": 2.3}),
        ),
        grid=(5, 5),
    )
)
@example(  # 16-bit grey: a fractional box blur (a far pixel of small weight) on a tall strip
    case=Case("I;16", 2, 300, seed=1, steps=(("box_blur", {"radius": 5.5}), ("flip", {})), grid=(1, 5))
)
def test_any_pipeline_on_any_image_and_grid_equals_pillow_on_the_whole_image(
    client: Client, no_leftovers: None, case: Case
) -> None:
    image = case.image()
    expected = reference_or_none(image.copy(), case.steps)
    if expected is None:
        with pytest.raises((UnsupportedMode, InvalidParameter)):
            client.process_image(image, list(case.steps), grid=case.grid)
        assume(False)  # refused as Pillow refuses: nothing to compare
    result = client.process_image(image, list(case.steps), grid=case.grid)
    assert_identical(result, expected)
