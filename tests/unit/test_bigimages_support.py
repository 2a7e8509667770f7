"""tests/support/bigimages.py: the seeded image, its writers, its region reference, the memory sampler.

The big-image tests (tests/test_big_images.py) trust these to make a gigapixel image
piecewise and to know Pillow's answer for any box of it; here each is checked on small
images against the whole picture and Pillow's own whole-image calls.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
from bigimages import (
    ProcessTreePeak,
    TiledTiffReader,
    bands,
    pixel_array,
    pixel_region,
    reference_region,
    region_grid,
    write_jpeg,
    write_png,
    write_striped_tiff,
    write_tiled_tiff,
)
from PIL import Image, ImageFilter
from reference import reference

WHOLE = (0, 0, 700, 450)


def test_any_box_of_the_seeded_image_is_the_crop_of_the_whole() -> None:
    whole = pixel_array(5, WHOLE)
    for box in [(0, 0, 1, 1), (255, 127, 257, 129), (13, 300, 699, 450), (600, 0, 700, 17), (3, 3, 3, 9)]:
        part = pixel_array(5, box)
        assert part.shape == (box[3] - box[1], box[2] - box[0], 3)
        assert np.array_equal(part, whole[box[1] : box[3], box[0] : box[2]]), box


def test_the_seed_changes_the_picture_and_a_blur_changes_many_of_its_pixels() -> None:
    image = pixel_region(1, WHOLE)
    assert pixel_region(2, WHOLE).tobytes() != image.tobytes()
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(4)))
    assert (blurred != np.asarray(image)).any(axis=2).mean() > 0.2
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 1000  # not a few flat colours


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_modes_are_made_from_the_same_pixels(mode: str) -> None:
    image = pixel_region(3, WHOLE, mode)
    assert (image.mode, image.size) == (mode, (700, 450))
    red = np.asarray(pixel_region(3, WHOLE, "RGB"))[..., 0]
    assert np.array_equal(np.asarray(image.getchannel(0)), red)


def test_a_box_outside_the_first_quadrant_or_a_mode_without_bands_is_refused() -> None:
    with pytest.raises(ValueError):
        pixel_array(1, (-1, 0, 5, 5))
    with pytest.raises(ValueError):
        pixel_array(1, (0, 0, 5, 5), "CMYK")


def test_bands_and_region_grids_cover_the_image_once() -> None:
    assert list(bands(10, 7, 3)) == [(0, 0, 10, 3), (0, 3, 10, 6), (0, 6, 10, 7)]
    boxes = region_grid((1000, 700), 3, 2, align=(64, 64))
    covered = np.zeros((700, 1000), int)
    for left, upper, right, lower in boxes:
        assert left % 64 == 0 and upper % 64 == 0
        covered[upper:lower, left:right] += 1
    assert len(boxes) == 6 and (covered == 1).all()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
@pytest.mark.parametrize(
    ("compression", "predictor"),
    [(None, False), ("deflate", True), ("zlib", True), ("zlib", False), ("lzw", True), ("packbits", False)],
)
def test_the_tiff_writers_write_the_seeded_pixels_as_pillow_reads_them(
    tmp_path: Path, mode: str, compression: str | None, predictor: bool
) -> None:
    expected = pixel_region(7, WHOLE, mode).tobytes()
    tiled, striped = tmp_path / "tiled.tif", tmp_path / "striped.tif"
    write_tiled_tiff(tiled, 700, 450, 7, tile=128, compression=compression, predictor=predictor, mode=mode)
    write_striped_tiff(
        striped, 700, 450, 7, rowsperstrip=50, compression=compression, predictor=predictor, mode=mode
    )
    with tifffile.TiffFile(tiled) as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled and tif.pages.first.tilewidth == 128
    with tifffile.TiffFile(striped) as tif:
        assert not tif.is_bigtiff and not tif.pages.first.is_tiled and tif.pages.first.rowsperstrip == 50
        assert len(tif.pages.first.dataoffsets) == 9
    for path in (tiled, striped):
        with Image.open(path) as image:
            assert (image.mode, image.size) == (mode, (700, 450))
            assert image.tobytes() == expected, path.name


def test_a_striped_tiff_refuses_what_it_does_not_encode(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_striped_tiff(tmp_path / "x.tif", 10, 10, 1, compression="packbits", predictor=True)
    with pytest.raises(ValueError):
        write_striped_tiff(tmp_path / "x.tif", 10, 10, 1, compression="jpeg", predictor=False)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_the_png_written_band_by_band_is_the_seeded_image(tmp_path: Path, mode: str) -> None:
    write_png(tmp_path / "x.png", 700, 600, 4, mode=mode)  # 600 rows: bands of 256 and a short one
    with Image.open(tmp_path / "x.png") as image:
        assert image.tobytes() == pixel_region(4, (0, 0, 700, 600), mode).tobytes()


def test_the_jpeg_is_pillows_encoding_of_the_seeded_image(tmp_path: Path) -> None:
    write_jpeg(tmp_path / "x.jpg", 700, 450, 4, quality=90)
    with Image.open(tmp_path / "x.jpg") as image:
        assert image.format == "JPEG" and image.size == (700, 450)
        error = np.abs(np.asarray(image).astype(int) - np.asarray(pixel_region(4, WHOLE)).astype(int))
        assert error.mean() < 4


def test_the_tiled_reader_gives_any_box_from_its_tiles(tmp_path: Path) -> None:
    write_tiled_tiff(tmp_path / "t.tif", 700, 450, 9, tile=128)
    whole = pixel_array(9, WHOLE)
    reader = TiledTiffReader(tmp_path / "t.tif")
    try:
        assert reader.size == (700, 450) and reader.tile == (128, 128)
        for box in [WHOLE, (1, 2, 3, 4), (100, 120, 640, 449), (640, 384, 700, 450)]:
            assert np.array_equal(reader.region(box), whole[box[1] : box[3], box[0] : box[2]]), box
    finally:
        reader.close()


@pytest.mark.parametrize(
    "ops", [["gaussian_blur:radius=4"], ["sharpen", "gaussian_blur:radius=2"], ["median:size=5", "invert"]]
)
def test_the_region_reference_is_the_whole_image_reference_cropped(ops: list[str]) -> None:
    whole = reference(pixel_region(6, WHOLE), ops)
    for box in [*region_grid((700, 450), 4, 3), (0, 0, 700, 450), (350, 200, 351, 201)]:
        got = reference_region(6, box, (700, 450), ops)
        assert got.tobytes() == whole.crop(box).tobytes(), box
    inner = (200, 100, 500, 300)  # without its margin, a box's own edges would be wrong
    assert reference(pixel_region(6, inner), ops).tobytes() != whole.crop(inner).tobytes()


def test_a_region_reference_refuses_global_and_geometry_steps() -> None:
    for ops in (["autocontrast"], ["rotate"]):
        with pytest.raises(ValueError):
            reference_region(1, (0, 0, 10, 10), (20, 20), ops)


def test_the_sampler_sees_the_peak_of_every_descendant_and_names_their_roles(tmp_path: Path) -> None:
    grandchild = (
        "import time; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); del b; time.sleep(1.5)"
    )
    child = textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
        time.sleep(0.3)
        p.wait()
    """)
    proc = subprocess.Popen([sys.executable, "-c", child])
    sampler = ProcessTreePeak(proc.pid, interval=0.05).start()
    try:
        proc.wait(timeout=30)
    finally:
        peaks = sampler.stop()
    assert proc.returncode == 0
    grand = [p for p in peaks.values() if p.ppid in peaks and p.pid != proc.pid]
    assert len(grand) == 1 and grand[0].hwm > 200 << 20  # its peak, though it freed the memory and ended
    assert peaks[proc.pid].hwm < 100 << 20
    assert sampler.by_role().keys() == {"client", "other"}
    assert sampler.role(peaks[proc.pid]) == "client"
