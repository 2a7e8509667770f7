"""A raw source's box read by its rows alone equals the whole image's crop (``process_image``).

Each tile of a raw source reads only the rows of its cut from the stored value
(:meth:`tilechord.imaging.raw.RawLayout.crop`); for every mode the raw format carries,
palettes and transparency included, and any box inside the image, that must be the very
crop of the unpacked whole, and only those rows' bytes are read.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tilechord.imaging.raw import RAW_HEAD, pack_raw, raw_layout, unpack_raw

WIDTH, HEIGHT = 61, 43


def image(mode: str) -> Image.Image:
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8))
    if mode == "P-transparent":
        out = rgb.convert("P")
        out.info["transparency"] = 7
        return out
    if mode in ("I;16", "I", "F"):
        return rgb.convert("L").convert(mode)
    return rgb.convert(mode)


MODES = ["RGB", "RGBA", "L", "LA", "1", "P", "P-transparent", "CMYK", "I;16", "I", "F", "YCbCr"]


def boxes() -> st.SearchStrategy[tuple[int, int, int, int]]:
    xs, ys = st.integers(0, WIDTH), st.integers(0, HEIGHT)
    return st.tuples(xs, ys, xs, ys).map(
        lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    )


@settings(max_examples=120, deadline=None)
@given(mode=st.sampled_from(MODES), box=boxes())
def test_a_box_read_by_rows_equals_the_crop_of_the_whole_raw_image(
    mode: str, box: tuple[int, int, int, int]
) -> None:
    blob = pack_raw(image(mode))
    reads: list[tuple[int, int]] = []

    def read(offset: int, size: int) -> bytes:
        reads.append((offset, size))
        return blob[offset : offset + size]

    got = raw_layout(read(0, RAW_HEAD)).crop(read, box)
    want = unpack_raw(blob)[0].crop(box)
    assert (got.mode, got.size, got.tobytes()) == (want.mode, want.size, want.tobytes())
    assert got.info.get("transparency") == want.info.get("transparency")
    assert got.getpalette() == want.getpalette()
    rows = reads[1][1] if len(reads) > 1 else 0
    assert rows <= (box[3] - box[1]) * len(image(mode).tobytes()) // HEIGHT  # only the box's rows


@pytest.mark.parametrize("mode", MODES)
def test_the_row_stride_is_the_raw_images_bytes_per_row(mode: str) -> None:
    source = image(mode)
    layout = raw_layout(pack_raw(source))
    assert layout.size == source.size
    assert layout.stride * HEIGHT == len(source.tobytes())
