"""A PA TIFF (palette plus alpha) through real workers: kernels and rank filters on it.

Pillow filters a PA image's palette indices as grey levels and returns it without its
palette (black once saved), so tilechord refuses PA for those filters before anything is
enqueued, saying why and what to do; what it says to do, ``convert:mode=RGBA`` first,
equals Pillow on the whole image.  The pure checks are in tests/unit/test_ops_pa.py.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from images import encoded, photo
from PIL import Image
from reference import reference

import tilechord
from tilechord import Client


def pa_tiff(width: int, height: int) -> bytes:
    """A PA TIFF, as the corpus had: a 64-colour photo with a gradient alpha."""
    image = photo(width, height, "PA", seed=3)
    image.putalpha(Image.radial_gradient("L").resize((width, height)))
    data = encoded(image, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "PA"
    return data


@pytest.mark.parametrize("spec", ["sharpen", "median"])
def test_a_filter_on_a_pa_tiff_is_refused_before_anything_is_enqueued_saying_why(
    client: Client, spec: str, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    with pytest.raises(tilechord.UnsupportedMode) as info:
        client.process(pa_tiff(61, 47), [spec], grid=(3, 2), timeout=60)
    message = str(info.value)
    assert message.startswith(f"{spec} cannot work on mode PA images")
    assert "palette indices" in message and "'convert:mode=RGBA'" in message
    assert messages() == []  # not one task message was published


@pytest.mark.parametrize(
    ("specs", "grid"),
    [(["convert:mode=RGBA", "sharpen"], (3, 2)), (["convert:mode=RGBA", "median:size=5"], (4, 5))],
    ids=["sharpen-3x2", "median5-4x5"],
)
def test_converting_a_pa_tiff_to_rgba_first_equals_pillow_on_the_whole_image(
    client: Client, specs: list[str], grid: tuple[int, int], no_leftovers: None
) -> None:
    data = pa_tiff(123, 77)
    result = Image.open(io.BytesIO(client.process(data, specs, grid=grid, timeout=120)))
    expected = reference(Image.open(io.BytesIO(data)), specs)
    assert result.format == "TIFF"
    assert (result.mode, result.size) == (expected.mode, expected.size) == ("RGBA", (123, 77))
    assert result.tobytes() == expected.tobytes()
