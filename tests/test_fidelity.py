"""Fidelity through the real workers: odd sizes, every mode, file formats, metadata, frames.

Each result is compared with Pillow called directly on the whole image (the references
of ``support/reference.py``, written from ``../shared/ops-reference.md``) and, for files,
encoded the way the README promises: the output format asked for or the input's, JPEG
with the input's quantisation tables and subsampling when the input was a JPEG of the
same mode (else quality 95), EXIF, ICC profile and DPI carried over, every frame kept.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from images import encoded, photo, random_image
from PIL import Image, ImageCms, ImageOps, ImageSequence, JpegImagePlugin
from reference import reference_or_none
from strategies import Steps

from tilechord import Client
from tilechord.errors import UnsupportedMode

MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")

MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112


def op(name: str, **params: Any) -> tuple[str, dict[str, Any]]:
    return (name, params)


def pillow(image: Image.Image, steps: Steps) -> Image.Image:
    """The pipeline's Pillow reference on the whole image; it must not be refused here."""
    result = reference_or_none(image, steps)
    assert result is not None, f"Pillow refuses {steps} on mode {image.mode}: a useless test case"
    return result


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_same_pixels(actual: Image.Image, expected: Image.Image) -> None:
    assert (actual.mode, actual.size) == (expected.mode, expected.size)
    assert actual.tobytes() == expected.tobytes(), "pixels differ"
    if expected.mode in ("P", "PA"):
        assert actual.getpalette() == expected.getpalette()
    assert actual.info.get("transparency") == expected.info.get("transparency")


def saved_as(image: Image.Image, fmt: str, source: Image.Image | None, **options: Any) -> Image.Image:
    """*image* saved as tilechord should save it, and decoded again.

    JPEG keeps a JPEG source's quantisation tables and subsampling when the modes agree,
    and uses quality 95 otherwise.
    """
    if fmt == "JPEG":
        if source is not None and source.format == "JPEG" and source.mode == image.mode:
            options.update(
                qtables=source.quantization,  # type: ignore[attr-defined]
                subsampling=JpegImagePlugin.get_sampling(source),
            )
        else:
            options["quality"] = 95
    return opened(encoded(image, fmt, **options))


#: An sRGB profile (made once: it records the time it was made).
ICC: bytes = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif(orientation: int = 1) -> Image.Exif:
    tags = Image.Exif()
    tags[MAKE] = "Tilechord Camera Co."
    tags[MODEL] = "TC-1"
    tags[ORIENTATION] = orientation
    return tags


# ------------------------------------------------------------------------ odd sizes

ODD_SIZES = [(1, 1), (1, 9), (9, 1), (3, 7)]
GRIDS = [(1, 1), (2, 1), (5, 5)]
ODD_PIPELINES: dict[str, Steps] = {
    "blur-sharpen": (op("gaussian_blur", radius=3.0), op("sharpen")),
    "rotate-median": (op("rotate", angle=90), op("median", size=5)),
    "mirror-smooth_more-flip": (op("mirror"), op("smooth_more"), op("flip")),
}


@pytest.mark.parametrize("pipeline", ODD_PIPELINES)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"grid{g[0]}x{g[1]}")
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_odd_sized_image_on_any_grid_equals_pillow_on_the_whole_image(
    client: Client, no_leftovers: None, size: tuple[int, int], grid: tuple[int, int], pipeline: str
) -> None:
    image = random_image("RGB", *size, seed=sum(size))
    steps = ODD_PIPELINES[pipeline]
    result = client.process_image(image, list(steps), grid=grid)
    assert_same_pixels(result, pillow(image, steps))


@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_grid_larger_than_the_image_is_clipped_to_one_pixel_per_tile(
    client: Client, no_leftovers: None, size: tuple[int, int]
) -> None:
    image = random_image("L", *size, seed=5)
    data = encoded(image, "PNG")
    job = client.submit(data, ["box_blur:radius=1.5"], grid=(5, 5))
    assert job.tiles == min(5, size[0]) * min(5, size[1])
    assert_same_pixels(opened(job.get(timeout=60)), pillow(image, (op("box_blur", radius=1.5),)))


# ---------------------------------------------------------------------------- modes

MODE_STEPS: dict[str, Steps] = {
    "rotate": (op("rotate", angle=270),),
    "flip-mirror": (op("flip"), op("mirror")),
    "gaussian_blur": (op("gaussian_blur", radius=2.0),),
    "median": (op("median", size=3),),
    "sharpen": (op("sharpen"),),
    "invert": (op("invert"),),
    "solarize": (op("solarize", threshold=100),),
    "grayscale": (op("grayscale"),),
}


@pytest.mark.parametrize("steps", MODE_STEPS)
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_is_kept_or_changed_as_pillow_does_or_refused_as_pillow_refuses(
    client: Client, no_leftovers: None, mode: str, steps: str
) -> None:
    image = random_image(mode, 41, 23, seed=2)
    if mode == "P":
        image.info["transparency"] = 7
    expected = reference_or_none(image, MODE_STEPS[steps])
    if expected is None:
        with pytest.raises(UnsupportedMode, match=mode):
            client.process_image(image, list(MODE_STEPS[steps]), grid=(3, 2))
        return
    result = client.process_image(image, list(MODE_STEPS[steps]), grid=(3, 2))
    assert_same_pixels(result, expected)
    if steps == "grayscale":
        assert result.mode == "L"
    elif steps in ("rotate", "flip-mirror", "gaussian_blur", "sharpen"):
        assert result.mode == mode


def _can_save(mode: str, fmt: str) -> bool:
    try:
        Image.new(mode, (2, 2)).save(io.BytesIO(), fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [(fmt, mode) for fmt in ("TIFF", "PNG") for mode in MODES if _can_save(mode, fmt)],
)
def test_mode_travels_through_a_file_as_pillow_reads_and_writes_it(
    client: Client, no_leftovers: None, fmt: str, mode: str
) -> None:
    image = random_image(mode, 30, 17, seed=4)
    source = opened(encoded(image, fmt))
    steps = (op("rotate", angle=90), op("flip"))
    data = client.process(encoded(image, fmt), list(steps), grid=(2, 2))
    out = opened(data)
    assert out.format == fmt
    assert out.mode == source.mode
    assert_same_pixels(out, saved_as(pillow(source, steps), fmt, source))


# -------------------------------------------------------------------------- formats

FORMAT_STEPS: Steps = (op("convert", mode="RGB"), op("sharpen"), op("mirror"))


def _source(name: str) -> bytes:
    image = photo(53, 37, seed=8)
    makers: dict[str, Callable[[], bytes]] = {
        "JPEG": lambda: encoded(image, "JPEG", quality=70, subsampling=1),  # 4:2:2, not the default
        "PNG": lambda: encoded(image, "PNG"),
        "WEBP-lossless": lambda: encoded(image, "WEBP", lossless=True),
        "WEBP-lossy": lambda: encoded(image, "WEBP", quality=60),
        "TIFF": lambda: encoded(image, "TIFF"),
        "BMP": lambda: encoded(image, "BMP"),
        "GIF": lambda: encoded(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=200), "GIF"),
    }
    return makers[name]()


INPUTS = ("JPEG", "PNG", "WEBP-lossless", "WEBP-lossy", "TIFF", "BMP", "GIF")
OUTPUTS = (None, "JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")


@pytest.mark.parametrize("out_fmt", OUTPUTS, ids=lambda f: f"to-{f or 'same'}")
@pytest.mark.parametrize("in_name", INPUTS)
def test_output_format_is_the_requested_one_or_the_inputs_and_equals_pillows_encoding(
    client: Client, no_leftovers: None, in_name: str, out_fmt: str | None
) -> None:
    data = _source(in_name)
    source = opened(data)
    data_out = client.process(data, list(FORMAT_STEPS), grid=(2, 2), format=out_fmt)
    out = opened(data_out)
    fmt = out_fmt or str(source.format)
    assert out.format == fmt
    expected = saved_as(pillow(source, FORMAT_STEPS), fmt, source)
    assert_same_pixels(out, expected)
    if fmt == "JPEG":
        assert out.quantization == expected.quantization  # type: ignore[attr-defined]
        assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(expected)


def test_jpeg_output_keeps_the_input_quality_tables_and_subsampling(
    client: Client, no_leftovers: None
) -> None:
    data = _source("JPEG")
    source = opened(data)
    out = opened(client.process(data, ["gaussian_blur:radius=1"], grid=(2, 1)))
    assert out.quantization == source.quantization  # type: ignore[attr-defined]
    assert JpegImagePlugin.get_sampling(out) == JpegImagePlugin.get_sampling(source) == 1
    as_png = opened(client.process(data, ["grayscale"], format="PNG"))
    # ...and from another format, or another mode, quality 95
    again = opened(client.process(encoded(as_png, "PNG"), ["invert"], format="JPEG"))
    at_95 = opened(encoded(pillow(as_png, (op("invert"),)), "JPEG", quality=95))
    assert again.quantization == at_95.quantization  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- metadata

#: (input, output): EXIF and ICC everywhere, DPI where both formats hold it.
METADATA_PAIRS = [
    ("JPEG", "JPEG"),
    ("PNG", "PNG"),
    ("TIFF", "TIFF"),
    ("WEBP", "WEBP"),
    ("JPEG", "PNG"),
    ("PNG", "JPEG"),
    ("JPEG", "TIFF"),
    ("TIFF", "JPEG"),
    ("JPEG", "WEBP"),
]
HOLDS_DPI = {"JPEG", "PNG", "TIFF"}


@pytest.mark.parametrize(("in_fmt", "out_fmt"), METADATA_PAIRS, ids=lambda f: f)
def test_exif_icc_profile_and_dpi_travel_from_input_to_output(
    client: Client, no_leftovers: None, in_fmt: str, out_fmt: str
) -> None:
    image = photo(48, 32, seed=6)
    options: dict[str, Any] = {"exif": exif(orientation=1), "icc_profile": ICC}
    if in_fmt in HOLDS_DPI:
        options["dpi"] = (150, 150)
    data = encoded(image, in_fmt, **options)
    source = opened(data)
    assert source.getexif()[MAKE] == "Tilechord Camera Co."  # Pillow wrote and reads it
    out = opened(client.process(data, ["gaussian_blur:radius=1.5"], grid=(2, 2), format=out_fmt))
    tags = out.getexif()
    assert (tags.get(MAKE), tags.get(MODEL)) == ("Tilechord Camera Co.", "TC-1")
    if "TIFF" not in (in_fmt, out_fmt):  # (Pillow applies and drops a TIFF's orientation as it loads it)
        assert tags.get(ORIENTATION) == 1
    assert out.info.get("icc_profile") == ICC
    if in_fmt in HOLDS_DPI and out_fmt in HOLDS_DPI:
        assert out.info.get("dpi") == pytest.approx((150, 150), abs=0.1)
    step = (op("gaussian_blur", radius=1.5),)
    assert_same_pixels(out, saved_as(pillow(source, step), out_fmt, source))


def test_exif_rotated_jpeg_keeps_its_orientation_and_displays_the_same_way(
    client: Client, no_leftovers: None
) -> None:
    image = photo(60, 36, seed=10)
    data = encoded(image, "JPEG", quality=85, exif=exif(orientation=6))
    source = opened(data)
    steps = (op("gaussian_blur", radius=2.0), op("sharpen"))
    out = opened(client.process(data, list(steps), grid=(3, 2)))
    assert out.getexif().get(ORIENTATION) == 6
    assert out.size == source.size == (60, 36)  # the pixels stay as stored: unrotated
    expected = saved_as(pillow(source, steps), "JPEG", source, exif=source.info["exif"])
    assert_same_pixels(out, expected)
    shown, shown_expected = ImageOps.exif_transpose(out), ImageOps.exif_transpose(expected)
    assert shown.size == ImageOps.exif_transpose(source).size == (36, 60)
    assert shown.tobytes() == shown_expected.tobytes()


@pytest.mark.parametrize("out_fmt", ["TIFF", "PNG"])
def test_exif_rotated_tiff_displays_the_same_way_after_the_operation(
    client: Client, no_leftovers: None, out_fmt: str
) -> None:
    """Pillow turns a TIFF upright as it loads it (and drops its orientation tag): the
    operation applies to the upright pixels, and the output shows them the same way."""
    data = encoded(photo(50, 30, seed=11), "TIFF", exif=exif(orientation=6))
    upright = opened(data)
    assert upright.size == (30, 50)  # Pillow's image is turned
    steps = (op("gaussian_blur", radius=2.0), op("mirror"))
    out = opened(client.process(data, list(steps), grid=(2, 3), format=out_fmt))
    assert_same_pixels(ImageOps.exif_transpose(out), pillow(upright, steps))


# ------------------------------------------------------------------- special inputs

SPECIAL: dict[str, tuple[Callable[[], bytes], Steps]] = {
    "cmyk-jpeg-adobe": (
        lambda: encoded(photo(45, 31, mode="CMYK", seed=1), "JPEG", quality=90),
        (op("gaussian_blur", radius=2.0), op("rotate", angle=180)),
    ),
    "grey16-png": (
        lambda: encoded(photo(45, 31, mode="I;16", seed=2), "PNG"),
        (op("rotate", angle=90), op("sharpen")),
    ),
    "grey-alpha-png": (
        lambda: encoded(photo(45, 31, mode="LA", seed=3), "PNG"),
        (op("gaussian_blur", radius=2.0), op("mirror")),
    ),
    "palette-transparency-png": (
        lambda: encoded(photo(45, 31, mode="P", seed=4), "PNG", transparency=5),
        (op("mirror"), op("rotate", angle=90)),
    ),
    "palette-transparency-gif": (
        lambda: encoded(photo(45, 31, mode="P", seed=5), "GIF", transparency=0),
        (op("flip"), op("rotate", angle=270)),
    ),
    "rgba-webp": (
        lambda: encoded(photo(45, 31, mode="RGBA", seed=6), "WEBP", lossless=True),
        (op("gaussian_blur", radius=1.0),),
    ),
}


@pytest.mark.parametrize("name", SPECIAL)
def test_special_input_keeps_its_mode_and_equals_pillow(
    client: Client, no_leftovers: None, name: str
) -> None:
    make, steps = SPECIAL[name]
    data = make()
    source = opened(data)
    out = opened(client.process(data, list(steps), grid=(2, 3)))
    assert (out.format, out.mode) == (source.format, source.mode)
    assert_same_pixels(out, saved_as(pillow(source, steps), str(source.format), source))
    if name == "cmyk-jpeg-adobe":
        assert "adobe" in source.info and "adobe" in out.info  # inverted CMYK, as Photoshop writes it
    if "transparency" in name:
        assert out.info.get("transparency") == source.info["transparency"]


# --------------------------------------------------------------------------- frames


def frames(data: bytes) -> list[tuple[Image.Image, int | None]]:
    """Every frame of a file, decoded, with its duration."""
    image = Image.open(io.BytesIO(data))
    out = []
    for frame in ImageSequence.Iterator(image):
        frame.load()  # (WebP reads a frame's duration as it decodes it)
        out.append((frame.copy(), frame.info.get("duration")))
    return out


ANIMATIONS: dict[str, tuple[str, dict[str, Any], Steps]] = {
    "gif": (
        "GIF",
        {"duration": [100, 250, 40, 180], "loop": 0},
        (op("convert", mode="RGB"), op("gaussian_blur", radius=2.0)),
    ),
    "tiff": ("TIFF", {}, (op("gaussian_blur", radius=2.0),)),
    "webp": (
        "WEBP",
        {"duration": [120, 60, 300], "loop": 0, "lossless": True},
        (op("gaussian_blur", radius=2.0),),
    ),
}


def animation(name: str) -> bytes:
    fmt, options, _ = ANIMATIONS[name]
    count = len(options.get("duration", [0, 0, 0]))
    pictures = [photo(40, 28, seed=20 + i) for i in range(count)]
    if fmt == "GIF":
        pictures = [p.convert("P", palette=Image.Palette.ADAPTIVE, colors=128) for p in pictures]
    return encoded(pictures[0], fmt, save_all=True, append_images=pictures[1:], **options)


@pytest.mark.parametrize("name", ANIMATIONS)
def test_every_frame_is_processed_with_its_duration_and_the_loop_count_kept(
    client: Client, no_leftovers: None, name: str
) -> None:
    fmt, options, steps = ANIMATIONS[name]
    data = animation(name)
    source = Image.open(io.BytesIO(data))
    count = getattr(source, "n_frames", 1)
    assert count == len(options.get("duration", [0, 0, 0])) > 1
    edited = [pillow(frame.copy(), steps) for frame, _ in frames(data)]
    durations = [duration for _, duration in frames(data)]
    reference_data = encoded(
        edited[0],
        fmt,
        save_all=True,
        append_images=edited[1:],
        duration=durations,
        loop=source.info.get("loop"),
    )
    out_data = client.process(data, list(steps), grid=(2, 2))
    out, expected = frames(out_data), frames(reference_data)
    assert len(out) == len(expected) == count
    assert [d for _, d in out] == [d for _, d in expected] == options.get("duration", durations)
    assert Image.open(io.BytesIO(out_data)).info.get("loop") == source.info.get("loop")
    for (frame, _), (want, _) in zip(out, expected, strict=True):
        assert_same_pixels(frame, want)


def test_process_image_works_on_the_pixels_it_is_given_whatever_their_orientation_tag(
    client: Client, no_leftovers: None
) -> None:
    image = opened(encoded(photo(30, 20, seed=2), "PNG", exif=exif(orientation=6)))
    result = client.process_image(image, ["mirror"], grid=(2, 2))
    assert result.size == (30, 20)
    assert result.tobytes() == pillow(image, (op("mirror"),)).tobytes()
