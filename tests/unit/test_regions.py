"""A region of a TIFF read from its segments alone is exactly what Pillow's whole-image crop gives.

Files are made by tifffile (tiled and striped, classic and BigTIFF, both byte orders, every
compression and predictor read here) and by Pillow (striped, as ``save`` writes them), from
seeded images; for fixed boxes (edges, single pixels, the whole image, boxes across segment
borders or past the image) and drawn ones, :func:`read_region` must equal
``Image.open(file).crop(box)`` in mode and bytes.  The reads are counted: a small box of a big
image fetches only its segments, and parsing the layout fetches no segment at all.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import tracemalloc
from collections.abc import Callable
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from images import photo, random_image
from PIL import Image

from tilechord.errors import InvalidImage, TilechordError, UnsupportedFormat
from tilechord.imaging.regions import TiffLayout, read_region, region_ranges, tiff_layout

WIDTH, HEIGHT = 203, 141  # neither a multiple of the tiles (32x48) nor of the strips (7 rows)
TILE = (48, 32)  # tifffile's (length, width)


class Source:
    """A file held in memory whose every read is recorded, as the Redis reader will be."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]

    @property
    def fetched(self) -> int:
        return sum(length for _, length in self.reads)


def tifffile_bytes(array: Any, **options: Any) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def pillow_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "TIFF", **options)
    return buffer.getvalue()


def pixels(mode: str, seed: int = 0) -> np.ndarray[Any, Any]:
    """Half photo (so predictors and compressors have structure), half noise (so seams show)."""
    left = np.asarray(photo(WIDTH, HEIGHT, "RGBA" if mode in ("RGBA", "RGBX", "CMYK") else "RGB", seed=seed))
    noise = np.asarray(random_image("RGBA", WIDTH, HEIGHT, seed=seed))
    full = np.concatenate([left[:, : WIDTH // 2], noise[:, WIDTH // 2 :, : left.shape[2]]], axis=1)
    if mode in ("RGB", "RGBA", "RGBX", "CMYK"):
        return np.ascontiguousarray(full[:, :, : 3 if mode == "RGB" else 4])
    if mode == "LA":
        return np.ascontiguousarray(full[:, :, :2])
    gray = full[:, :, 0]
    if mode == "I;16":
        return (gray.astype(np.uint16) * 257) ^ (full[:, :, 1].astype(np.uint16) & 0xF)
    if mode == "1":
        return gray > 127
    return np.ascontiguousarray(gray)


def tifffile_options(mode: str) -> dict[str, Any]:
    return {
        "RGBX": {"photometric": "rgb", "extrasamples": ["unspecified"]},
        "LA": {"photometric": "minisblack", "extrasamples": ["unassalpha"]},
        "CMYK": {"photometric": "separated"},
        "L-white": {"photometric": "miniswhite"},
        "1-black": {"photometric": "minisblack"},
    }.get(mode, {})


@functools.cache
def made_by_tifffile(mode: str, layout: str, compression: str | None, predictor: bool, order: str) -> bytes:
    segments = {"tile": TILE} if layout.startswith("tiled") else {"rowsperstrip": 7}
    return tifffile_bytes(
        pixels(mode.split("-")[0]),
        compression=compression,
        predictor=predictor or None,
        bigtiff=layout.endswith("big"),
        byteorder=order,
        **segments,
        **tifffile_options(mode),
    )


@functools.cache
def made_by_pillow(mode: str, compression: str | None, predictor: bool) -> bytes:
    image = Image.fromarray(pixels(mode)) if mode != "CMYK" else photo(WIDTH, HEIGHT).convert("CMYK")
    if mode == "1":
        image = image.convert("1")
    options: dict[str, Any] = {"tiffinfo": {317: 2}} if predictor else {}  # 317: Predictor, 2: horizontal
    return pillow_bytes(image, compression=compression, strip_size=4000, **options)


COMPRESSED = ["lzw", "zlib", "deflate"]  # zlib is Adobe deflate (8), deflate is 32946
TIFFFILE_CASES = [
    *(
        (mode, layout, compression, predictor, "<")
        for mode in ("RGB", "L", "I;16")
        for layout in ("tiled", "striped", "tiled-big", "striped-big")
        for compression, predictor in [(None, False), ("packbits", False)]
        + [(c, p) for c in COMPRESSED for p in (False, True)]
    ),
    *(
        (mode, layout, compression, predictor, order)
        for mode in ("RGBA", "LA", "1", "RGBX", "CMYK", "L-white", "1-black")
        for layout in ("tiled", "striped-big")
        for compression in (None, "lzw", "packbits")
        for predictor in (False, True)
        for order in ("<",)
        if not (predictor and (compression != "lzw" or mode.startswith("1")))
    ),
    *((mode, layout, "zlib", True, ">") for mode in ("RGB", "I;16", "L") for layout in ("tiled", "striped")),
    ("1", "striped", None, False, ">"),
]
PILLOW_CASES = [
    (mode, compression, predictor)
    for mode in ("RGB", "RGBA", "L", "LA", "1", "I;16", "CMYK")
    for compression in (None, "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits")
    for predictor in (False, True)
    if not (predictor and (compression not in ("tiff_lzw", "tiff_adobe_deflate") or mode == "1"))
]

BOXES = [
    (0, 0, WIDTH, HEIGHT),  # the whole image
    (0, 0, 1, 1),
    (WIDTH - 1, HEIGHT - 1, WIDTH, HEIGHT),  # the last pixel, in the last (padded) segment
    (31, 47, 33, 49),  # four tiles meet here
    (30, 5, 70, 22),  # across two tile columns and three strips
    (0, 6, WIDTH, 8),  # one row either side of a strip border, full width
    (100, 0, 101, HEIGHT),  # one column, top to bottom
    (-3, -2, 9, 11),  # past the top-left corner: Pillow's crop gives zeros there
    (WIDTH - 4, HEIGHT - 5, WIDTH + 6, HEIGHT + 2),
    (-5, -5, WIDTH + 5, HEIGHT + 5),
    (40, 40, 40, 60),  # empty
    (WIDTH + 1, 3, WIDTH + 9, 9),  # entirely outside
]


@functools.cache
def whole(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_region_is_pillows(data: bytes, box: tuple[int, int, int, int]) -> None:
    source = Source(data)
    got = read_region(source, tiff_layout(source, len(data)), box)
    expected = whole(data).crop(box)
    assert (got.mode, got.size) == (expected.mode, expected.size), box
    assert got.tobytes() == expected.tobytes(), box


@pytest.mark.parametrize(("mode", "layout", "compression", "predictor", "order"), TIFFFILE_CASES)
def test_regions_of_tifffile_files_equal_pillows_crop(
    mode: str, layout: str, compression: str | None, predictor: bool, order: str
) -> None:
    data = made_by_tifffile(mode, layout, compression, predictor, order)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:  # the file is what the case says it is
        page = tif.pages.first
        assert page.is_tiled == layout.startswith("tiled") and tif.is_bigtiff == layout.endswith("big")
        assert (int(page.predictor) == 2) == predictor and tif.byteorder == order
    for box in BOXES:
        assert_region_is_pillows(data, box)


@pytest.mark.parametrize(("mode", "compression", "predictor"), PILLOW_CASES)
def test_regions_of_pillow_files_equal_pillows_crop(
    mode: str, compression: str | None, predictor: bool
) -> None:
    data = made_by_pillow(mode, compression, predictor)
    assert whole(data).mode == mode
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert not tif.pages.first.is_tiled and (int(tif.pages.first.predictor) == 2) == predictor
    for box in BOXES:
        assert_region_is_pillows(data, box)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("layout", ["tiled-big", "striped-big"])
def test_a_big_endian_bigtiff_which_pillow_cannot_open_reads_as_tifffile_decodes_it(layout: str) -> None:
    data = made_by_tifffile("RGB", layout, "zlib", True, ">")
    with pytest.raises(Image.UnidentifiedImageError):
        whole(data)  # Pillow 13 opens no big-endian BigTIFF; tifffile's own decode is the reference
    source = Source(data)
    layout_ = tiff_layout(source, len(data))
    expected = tifffile.imread(io.BytesIO(data))
    for box in BOXES[:7]:
        left, upper, right, lower = box
        got = read_region(source, layout_, box)
        assert got.tobytes() == np.ascontiguousarray(expected[upper:lower, left:right]).tobytes()


def boxes() -> st.SearchStrategy[tuple[int, int, int, int]]:
    xs = st.integers(-4, WIDTH + 4)
    ys = st.integers(-4, HEIGHT + 4)
    return st.tuples(xs, ys, xs, ys).map(
        lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3]))
    )


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(TIFFFILE_CASES), box=boxes())
def test_any_box_of_a_tifffile_file_equals_pillows_crop(
    case: tuple[str, str, str | None, bool, str], box: tuple[int, int, int, int]
) -> None:
    assert_region_is_pillows(made_by_tifffile(*case), box)


@settings(max_examples=40, deadline=None)
@given(case=st.sampled_from(PILLOW_CASES), box=boxes())
def test_any_box_of_a_pillow_file_equals_pillows_crop(
    case: tuple[str, str | None, bool], box: tuple[int, int, int, int]
) -> None:
    assert_region_is_pillows(made_by_pillow(*case), box)


JPEG_CASES = [
    ("RGB", "tiled", (2, 2)),  # tifffile stores RGB as YCbCr, subsampled 2x2 by default
    ("RGB", "tiled", (1, 1)),
    ("RGB", "striped", (2, 1)),
    ("RGB", "striped-big", (4, 1)),
    ("RGB", "tiled-big", (2, 1)),
    ("RGB-stored", "tiled", None),  # PhotometricInterpretation RGB, no colour conversion
    ("RGB-stored", "striped", None),
    ("L", "tiled", None),
    ("L", "striped-big", None),
]


@functools.cache
def made_as_jpeg(mode: str, layout: str, subsampling: tuple[int, int] | None) -> bytes:
    options: dict[str, Any] = {"tile": (32, 48)} if layout.startswith("tiled") else {"rowsperstrip": 16}
    if subsampling:
        options.update(photometric="ycbcr", subsampling=subsampling)
    if mode == "RGB-stored":
        options.update(photometric="rgb", compressionargs={"outcolorspace": "rgb"})
    image = photo(WIDTH, HEIGHT, "L" if mode == "L" else "RGB")
    return tifffile_bytes(np.asarray(image), compression="jpeg", bigtiff=layout.endswith("big"), **options)


@pytest.mark.parametrize(("mode", "layout", "subsampling"), JPEG_CASES)
def test_regions_of_jpeg_tiffs_equal_pillows_crop(
    mode: str, layout: str, subsampling: tuple[int, int] | None
) -> None:
    data = made_as_jpeg(mode, layout, subsampling)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        assert int(page.compression) == 7 and page.is_tiled == layout.startswith("tiled")
        assert int(page.photometric) == {"RGB": 6, "RGB-stored": 2, "L": 1}[mode]
        assert subsampling is None or page.subsampling == subsampling
    for box in BOXES:
        assert_region_is_pillows(data, box)


@pytest.mark.parametrize("mode", ["RGB", "L", "YCbCr"])
def test_regions_of_jpeg_tiffs_that_pillow_wrote_equal_pillows_crop(mode: str) -> None:
    data = pillow_bytes(photo(WIDTH, HEIGHT, mode), compression="jpeg", quality=80, strip_size=4000)
    for box in BOXES:
        assert_region_is_pillows(data, box)


def precompressed(streams: list[bytes], shape: tuple[int, ...], **options: Any) -> bytes:
    """A JPEG TIFF of the given streams, written as they are: tags and streams may disagree."""
    return tifffile_bytes(iter(streams), shape=shape, dtype=np.uint8, compression="jpeg", **options)


def test_a_jfif_stream_in_an_rgb_jpeg_tiff_is_left_unconverted_as_libtiff_leaves_it() -> None:
    rgb = np.asarray(photo(96, 64))
    streams = [  # plain JFIF (YCbCr) streams, under a PhotometricInterpretation that says RGB
        imagecodecs.jpeg8_encode(
            np.ascontiguousarray(rgb[y : y + 32, x : x + 48]), level=90, subsampling="444"
        )
        for y in (0, 32)
        for x in (0, 48)
    ]
    options = {"compressionargs": {"outcolorspace": "rgb"}, "tile": (32, 48), "subsampling": (1, 1)}
    data = precompressed(streams, rgb.shape, photometric="rgb", **options)
    assert np.abs(np.asarray(whole(data)).astype(int) - rgb).max() > 50  # Pillow shows the YCbCr values
    for box in [(0, 0, 96, 64), (40, 20, 60, 40)]:
        assert_region_is_pillows(data, box)


def test_an_rgb_stream_under_a_ycbcr_tag_is_converted_as_libtiff_converts_it() -> None:
    rgb = np.asarray(photo(48, 32))
    # an Adobe-marked RGB stream, which a JPEG decoder left alone would not convert
    stream = imagecodecs.jpeg8_encode(rgb, level=90, colorspace="rgb", outcolorspace="rgb", subsampling="444")
    data = precompressed([stream], rgb.shape, photometric="ycbcr", subsampling=(1, 1))
    assert np.abs(np.asarray(whole(data)).astype(int) - rgb).max() > 50  # Pillow converts it as YCbCr
    assert_region_is_pillows(data, (0, 0, 48, 32))


def test_a_last_jpeg_strip_with_the_full_rows_per_strip_is_taken_as_libtiff_takes_it() -> None:
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[:40] = np.asarray(photo(48, 40))
    streams = [  # three strips of 16 rows for 40 rows: the last stream still has 16
        imagecodecs.jpeg8_encode(np.ascontiguousarray(rgb[y : y + 16]), level=90, subsampling="444")
        for y in (0, 16, 32)
    ]
    data = precompressed(streams, (40, 48, 3), photometric="ycbcr", subsampling=(1, 1), rowsperstrip=16)
    for box in [(0, 0, 48, 40), (3, 30, 40, 40)]:
        assert_region_is_pillows(data, box)


@pytest.mark.parametrize("stored", ["444", "422"])
def test_a_jpeg_segment_sampled_unlike_its_tags_fails_as_pillow_fails(stored: str) -> None:
    rgb = np.asarray(photo(48, 32))
    stream = imagecodecs.jpeg8_encode(rgb, level=90, subsampling=stored)
    data = precompressed([stream], rgb.shape, photometric="ycbcr")  # tagged 2x2, the default
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()
    layout = tiff_layout(Source(data), len(data))
    with pytest.raises(InvalidImage):
        read_region(Source(data), layout, (0, 0, 10, 10))


@functools.cache
def big_tiled() -> bytes:
    """2048x2048 RGB noise in 256x256 deflate tiles: 12 MB raw, about 12 MB compressed."""
    noise = np.random.default_rng(7).integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    return tifffile_bytes(noise, tile=(256, 256), compression="zlib", bigtiff=True)


def segment_ranges(layout: TiffLayout) -> list[tuple[int, int]]:
    return list(zip(layout.offsets, layout.bytecounts, strict=True))


def test_the_layout_is_parsed_without_fetching_any_segment() -> None:
    data = big_tiled()
    source = Source(data)
    layout = tiff_layout(source, len(data))
    assert (layout.width, layout.height, layout.mode) == (2048, 2048, "RGB") and layout.tiled
    assert source.fetched < 4096  # a header and an IFD of 64 tiles
    for start, length in source.reads:
        for offset, count in segment_ranges(layout):
            assert start + length <= offset or offset + count <= start


def test_a_small_box_of_a_big_tiled_image_fetches_only_its_tiles() -> None:
    data = big_tiled()
    layout = tiff_layout(Source(data), len(data))
    tile = max(layout.bytecounts)
    assert len(data) > 60 * tile  # the file is big next to what is fetched below
    inside = Source(data)
    assert_box = (300, 300, 310, 320)  # within the tile at column 1, row 1
    region = read_region(inside, layout, assert_box)
    assert region.tobytes() == whole(data).crop(assert_box).tobytes()
    assert inside.reads == region_ranges(layout, assert_box) == [segment_ranges(layout)[9]]
    across = Source(data)
    read_region(across, layout, (250, 250, 260, 260))  # where four tiles meet
    expected = [segment_ranges(layout)[i] for i in (0, 1, 8, 9)]
    assert sorted(region_ranges(layout, (250, 250, 260, 260))) == expected
    assert across.fetched == sum(count for _, count in expected) < 5 * tile


def test_a_small_box_of_a_big_tiled_image_holds_no_more_than_a_few_tiles() -> None:
    data = big_tiled()
    layout = tiff_layout(Source(data), len(data))
    tracemalloc.start()
    try:
        read_region(lambda offset, length: data[offset : offset + length], layout, (250, 250, 260, 260))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    tile = 256 * 256 * 3
    assert peak < 5 * tile < len(data) // 12  # two back-to-back tiles read at once, one decoded: not 64


def test_an_uncompressed_strip_is_fetched_only_for_the_rows_the_box_needs() -> None:
    data = made_by_pillow("RGB", None, False)  # Pillow writes one strip when uncompressed
    source = Source(data)
    layout = tiff_layout(source, len(data))
    assert len(layout.offsets) == 1 and layout.segment_height == HEIGHT
    source.reads.clear()
    box = (10, 50, 20, 53)
    assert read_region(source, layout, box).tobytes() == whole(data).crop(box).tobytes()
    assert source.reads == [(layout.offsets[0] + 50 * WIDTH * 3, 3 * WIDTH * 3)]


def test_back_to_back_segments_are_fetched_in_one_read() -> None:
    data = made_by_pillow("L", "tiff_lzw", False)
    source = Source(data)
    layout = tiff_layout(source, len(data))
    source.reads.clear()
    read_region(source, layout, (0, 0, WIDTH, HEIGHT))
    assert len(layout.offsets) > 5 and len(source.reads) == 1


def test_a_layout_is_plain_data_that_can_be_rebuilt_from_its_fields() -> None:
    data = made_by_tifffile("RGB", "tiled", "lzw", True, "<")
    layout = tiff_layout(Source(data), len(data))
    rebuilt = TiffLayout(**dataclasses.asdict(layout))
    assert rebuilt == layout
    assert (
        read_region(Source(data), rebuilt, (5, 5, 90, 60)).tobytes()
        == whole(data).crop((5, 5, 90, 60)).tobytes()
    )


RGB8 = np.zeros((40, 50, 3), np.uint8)
REFUSED: dict[str, Callable[[], bytes]] = {
    "JPEG CMYK": lambda: tifffile_bytes(
        np.zeros((40, 48, 4), np.uint8), photometric="separated", compression="jpeg", tile=(16, 16)
    ),
    "JPEG with alpha": lambda: pillow_bytes(photo(50, 40, "RGBA"), compression="jpeg"),
    "separate planes": lambda: tifffile_bytes(
        np.zeros((3, 40, 50), np.uint8), photometric="rgb", planarconfig="separate"
    ),
    "premultiplied alpha": lambda: tifffile_bytes(
        np.zeros((40, 50, 4), np.uint8), extrasamples=["assocalpha"]
    ),
    "palette": lambda: pillow_bytes(photo(50, 40, "P"), compression="tiff_lzw"),
    "16-bit RGB": lambda: tifffile_bytes(np.zeros((40, 50, 3), np.uint16)),
    "signed 16-bit": lambda: tifffile_bytes(np.zeros((40, 50), np.int16)),
    "float": lambda: tifffile_bytes(np.zeros((40, 50), np.float32), compression="zlib", predictor=True),
    "webp": lambda: tifffile_bytes(RGB8, compression="webp", tile=(16, 16)),
    "volume": lambda: tifffile_bytes(
        np.zeros((4, 32, 32), np.uint8), photometric="minisblack", tile=(2, 16, 16), volumetric=True
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_cannot_be_read_by_region_is_refused_by_the_layout_with_one_line(name: str) -> None:
    data = REFUSED[name]()
    with pytest.raises(UnsupportedFormat) as caught:
        tiff_layout(Source(data), len(data))
    assert "\n" not in str(caught.value) and "not read by region" in str(caught.value)


def test_a_file_that_is_no_tiff_is_an_invalid_image() -> None:
    png = io.BytesIO()
    photo(20, 10).save(png, "PNG")
    for data in (png.getvalue(), b"II*\x00" + b"\xff" * 40, b""):
        with pytest.raises(InvalidImage):
            tiff_layout(Source(data), len(data))


def test_a_truncated_tiff_is_an_invalid_image_from_the_layout() -> None:
    data = made_by_pillow("RGB", "tiff_lzw", False)
    layout = tiff_layout(Source(data), len(data))
    cut = data[: layout.offsets[-1] + 1]  # the IFD comes first in Pillow's files; the last strip is cut
    with pytest.raises(InvalidImage):
        tiff_layout(Source(cut), len(cut))


@pytest.mark.parametrize("compression", ["lzw", "zlib", "packbits"])
def test_a_damaged_segment_is_an_invalid_image_from_the_read(compression: str) -> None:
    data = bytearray(made_by_tifffile("RGB", "tiled", compression, False, "<"))
    layout = tiff_layout(Source(bytes(data)), len(data))
    start, count = layout.offsets[0], layout.bytecounts[0]
    data[start : start + count] = b"\x80" * count  # a PackBits no-op run; LZW and zlib garbage
    with pytest.raises(InvalidImage):
        read_region(Source(bytes(data)), layout, (0, 0, 10, 10))


def test_a_source_that_returns_too_few_bytes_is_an_invalid_image() -> None:
    data = made_by_tifffile("L", "tiled", "lzw", False, "<")
    layout = tiff_layout(Source(data), len(data))
    with pytest.raises(InvalidImage):
        read_region(lambda offset, length: data[offset : offset + length - 1], layout, (0, 0, 5, 5))
    with pytest.raises(TilechordError):
        tiff_layout(lambda offset, length: data[offset : offset + length // 2], len(data))


def test_a_box_with_its_right_left_of_its_left_is_refused_as_pillow_refuses_it() -> None:
    data = made_by_tifffile("L", "tiled", "lzw", False, "<")
    layout = tiff_layout(Source(data), len(data))
    with pytest.raises(ValueError):
        whole(data).crop((10, 0, 5, 5))
    with pytest.raises(ValueError):
        read_region(Source(data), layout, (10, 0, 5, 5))


def test_a_tiff_that_pillow_turns_upright_on_load_is_not_read_by_region() -> None:
    """Pillow applies a TIFF's orientation tag as it loads it; the stored pixels are not its image."""
    image = Image.new("RGB", (50, 30), (10, 20, 30))
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    image.save(buffer, "TIFF", exif=exif)
    data = buffer.getvalue()
    with pytest.raises(UnsupportedFormat, match="orientation 6"):
        tiff_layout(lambda offset, size: data[offset : offset + size], len(data))
