"""Damaged files through the real workers: a typed error or Pillow's own result (issue #18 item 14).

Hypothesis takes a real file of a format tilechord reads and writes (made with Pillow;
the PSD by hand, since Pillow cannot write one), damages it (bit flips, bytes set,
truncations, PNG chunks or JPEG segments swapped, repeated or dropped, huge declared
sizes) and runs a job on it through the session's Redis and workers, into TIFF (which
holds every frame, in its own mode).  The API must raise nothing but a
:class:`TilechordError`; where Pillow decodes the file completely and its whole-image
calls and TIFF writer accept it, tilechord must give the same frames, byte for byte.
After each job the workers serve the next one and no key is left.

The header inspection the client does is fuzzed with many more examples, without Redis,
in ``unit/test_imaging_frames.py``; this file keeps to a few, each a real job.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from images import photo
from PIL import Image
from reference import pillow, reference_or_none
from workers import tilechord_keys

from tilechord import Client, Settings
from tilechord.errors import ImageTooLarge, TilechordError

#: The client's pixel limit here: a damaged header may declare any size, and below
#: Pillow's own limit a decoder allocates it all before finding the data short.
LIMIT = 4_000_000
PIPELINES = ([], ["mirror"], ["invert"], ["gaussian_blur:radius=1"], ["rotate:angle=90", "sharpen"])


def _saved(frames: list[Image.Image], fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    extra = {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    frames[0].save(buffer, fmt, **extra, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def _picture(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rgb = Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize(size),
            Image.radial_gradient("L").resize(size),
            Image.new("L", size, (40 * seed) % 256),
        ),
    )
    if mode == "P":
        picture = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
        picture.paste(0, (seed * 3, 2, seed * 3 + 4, 8))
        return picture
    return rgb.convert(mode)


def psd(width: int = 8, height: int = 6) -> bytes:
    """A small RGB Photoshop file with two layers, raw channels."""
    be = struct.pack
    header = b"8BPS" + be(">H", 1) + b"\0" * 6 + be(">HIIHH", 3, height, width, 8, 3)
    records, channels = b"", b""
    for (top, left, bottom, right), value in (((0, 0, height, width), 40), ((1, 2, 4, 7), 200)):
        size = (bottom - top) * (right - left)
        records += be(">iiiiH", top, left, bottom, right, 3)
        for cid in range(3):
            records += be(">hI", cid, 2 + size)
            channels += be(">H", 0) + bytes((value + 30 * cid) % 256 for _ in range(size))
        extra = be(">II", 0, 0) + b"\x03abc"
        records += b"8BIMnorm" + bytes((255, 0, 0, 0)) + be(">I", len(extra)) + extra
    info = be(">h", 2) + records + channels
    info += b"\0" * (len(info) % 2)
    layer_mask = be(">I", len(info)) + info
    composite = be(">H", 0) + bytes((i * 7) % 256 for i in range(3 * width * height))
    return header + be(">II", 0, 0) + be(">I", len(layer_mask)) + layer_mask + composite


def _corpus() -> dict[str, bytes]:
    rgb = _picture("RGB", (24, 16), 0)
    anim = [_picture("RGBA", (20, 14), seed) for seed in range(3)]
    tiff_pages = [rgb, _picture("L", (10, 8), 1).convert("F"), _picture("P", (16, 12), 2)]
    return {
        "png": _saved([rgb], "PNG"),
        "apng": _saved(anim, "PNG", duration=40, loop=0),
        "jpeg": _saved([rgb], "JPEG", quality=90),
        "gif": _saved([_picture("P", (30, 20), s) for s in range(3)], "GIF", transparency=0, duration=50),
        "tiff": _saved(tiff_pages, "TIFF"),
        "webp": _saved(anim, "WEBP", lossless=True, duration=40),
        "bmp": _saved([rgb], "BMP"),
        "psd": psd(),
        "mpo": _saved([_picture("RGB", (48, 32), 0), _picture("RGB", (24, 16), 1)], "MPO"),
        "ico": _saved([_picture("RGBA", (16, 16), 1)], "ICO"),
    }


CORPUS = _corpus()
#: Where the PSD's second layer record keeps its bottom edge (a signed 32-bit number).
PSD_LAYER_BOTTOM = 116


# ------------------------------------------------------------------ damage


def _pieces(data: bytes) -> list[tuple[int, int]]:
    """PNG chunks or JPEG marker segments, as (start, end); none for other formats."""
    pieces: list[tuple[int, int]] = []
    if data.startswith(b"\x89PNG"):
        offset = 8
        while offset + 12 <= len(data):
            end = min(len(data), offset + 12 + struct.unpack_from(">I", data, offset)[0])
            pieces.append((offset, end))
            offset = end
    elif data.startswith(b"\xff\xd8"):
        offset = 2
        while offset + 4 <= len(data) and data[offset] == 0xFF and data[offset + 1] != 0xDA:
            end = offset + 2 + struct.unpack_from(">H", data, offset + 2)[0]
            pieces.append((offset, end))
            offset = end
    return pieces


def _huge_size(data: bytes) -> bytes:
    """The declared size made huge where the format keeps it at a fixed place."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        struct.pack_into(">II", out, 16, 40_000, 40_000)
        struct.pack_into(">I", out, 29, zlib.crc32(bytes(out[12:29])))
    elif data.startswith(b"GIF"):
        struct.pack_into("<HH", out, 6, 50_000, 50_000)
    elif data.startswith(b"BM"):
        struct.pack_into("<ii", out, 18, 30_000, 30_000)
    elif data.startswith(b"8BPS"):
        struct.pack_into(">II", out, 14, 30_000, 30_000)
    elif data.startswith(b"\xff\xd8"):
        for start, _ in _pieces(data):
            if data[start + 1] in (0xC0, 0xC1, 0xC2):
                struct.pack_into(">HH", out, start + 5, 60_000, 60_000)
    elif data.startswith(b"RIFF") and data[12:16] == b"VP8X":
        out[24:30] = b"\xff\xff\x3f\xff\xff\x3f"
    elif data.startswith(b"II*\0"):
        (ifd,) = struct.unpack_from("<I", data, 4)
        (count,) = struct.unpack_from("<H", data, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack_from("<HH", data, entry)
            if tag in (256, 257):
                struct.pack_into("<H" if kind == 3 else "<I", out, entry + 8, 65_000)
    return bytes(out)


@dataclass(frozen=True)
class Mutation:
    """One damage (see the module docstring); its fields make a failing case readable."""

    kind: str
    where: float
    other: float = 0.0
    bit: int = 0
    value: int = 0

    def __call__(self, data: bytes) -> bytes:
        at = int(self.where * len(data))
        if self.kind == "flip":
            return data[:at] + bytes([data[at] ^ (1 << self.bit)]) + data[at + 1 :]
        if self.kind == "byte":
            return data[:at] + bytes([self.value]) + data[at + 1 :]
        if self.kind == "cut":
            return data[: max(1, at)]
        if self.kind == "huge":
            try:
                return _huge_size(data)
            except (IndexError, struct.error):
                return data
        pieces = _pieces(data) or [(i, min(len(data), i + 16)) for i in range(0, len(data), 16)]
        a, b = pieces[int(self.where * len(pieces))], pieces[int(self.other * len(pieces))]
        if self.kind == "drop":
            return data[: a[0]] + data[a[1] :]
        if self.kind == "repeat":
            return data[: a[1]] + data[a[0] : a[1]] + data[a[1] :]
        first, second = sorted((a, b))
        if first[1] > second[0]:
            return data
        return (
            data[: first[0]] + data[second[0] : second[1]] + data[first[1] : second[0]]
            + data[first[0] : first[1]] + data[second[1] :]
        )  # fmt: skip


def mutations() -> st.SearchStrategy[Mutation]:
    unit = st.floats(0, 1, exclude_max=True)
    kinds = st.sampled_from(["flip", "byte", "cut", "swap", "repeat", "drop", "huge"])
    return st.builds(Mutation, kinds, unit, unit, st.integers(0, 7), st.integers(0, 255))


# ------------------------------------------------------------------ Pillow's own result


def pillow_result(data: bytes, steps: list[str]) -> list[Image.Image] | None:
    """Pillow on the whole file: every frame loaded, the steps applied, written as TIFF and read back.

    ``None`` where Pillow cannot: it fails to decode a frame, refuses a step for a mode,
    or its TIFF writer refuses.  A PSD is its composite (its layers are not frames).
    """
    try:
        image = Image.open(io.BytesIO(data))
        count = 1 if image.format == "PSD" else image.n_frames if hasattr(image, "n_frames") else 1
        frames = []
        for index in range(count):
            if image.size[0] * image.size[1] * (len(frames) + 1) > LIMIT:
                return None
            image.seek(index)
            image.load()
            frames.append(image.copy())
        edited = [reference_or_none(frame, steps) for frame in frames]
        if any(frame is None for frame in edited):
            return None
        out = Image.open(io.BytesIO(_saved([f for f in edited if f is not None], "TIFF")))
        result = []
        for index in range(getattr(out, "n_frames", 1)):
            out.seek(index)
            out.load()
            result.append(out.copy())
        return result
    except Exception:
        return None


def frames_of(data: bytes) -> list[Image.Image]:
    image = Image.open(io.BytesIO(data))
    out = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        image.load()
        out.append(image.copy())
    return out


@pytest.fixture(scope="module")
def limited(settings: Settings, worker: object) -> Iterator[Client]:
    """A client of the session's Redis and workers, with a pixel limit a fuzzer cannot make slow."""
    client = Client(dataclasses.replace(settings, max_pixels=LIMIT))
    try:
        yield client
    finally:
        client.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(  # the second layer's bottom made negative: reading n_frames raised ValueError
    name="psd", damage=[Mutation("byte", (PSD_LAYER_BOTTOM + 0.5) / len(CORPUS["psd"]), value=0xFF)], steps=[]
)
@example(name="mpo", damage=[Mutation("swap", 0.5, 0.5)], steps=["mirror"])  # a piece for itself: intact
@given(
    name=st.sampled_from(sorted(CORPUS)),
    damage=st.lists(mutations(), min_size=1, max_size=2),
    steps=st.sampled_from(PIPELINES),
)
def test_a_damaged_file_gives_a_typed_error_or_pillows_result_and_the_workers_go_on(
    limited: Client, redis_client: redis.Redis, name: str, damage: list[Mutation], steps: list[str]
) -> None:
    data = CORPUS[name]
    for mutate in damage:
        data = mutate(data) or data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pillow_result(data, steps)
        error: TilechordError | None = None
        try:
            out = limited.process(data, steps, grid=(2, 2), format="TIFF", timeout=60)
        except TilechordError as exc:
            out, error = None, exc
    event("Pillow's result" if expected is not None else "no Pillow result")
    event(f"tilechord: {type(error).__name__ if error else 'a result'}")
    if expected is not None:  # Pillow does it all: tilechord must give the same frames
        assert out is not None, f"Pillow processes the file but tilechord raised {error!r}"
        got = frames_of(out)
        assert [(f.mode, f.size) for f in got] == [(f.mode, f.size) for f in expected]
        for index, (frame, want) in enumerate(zip(got, expected, strict=True)):
            assert frame.tobytes() == want.tobytes(), f"frame {index + 1} differs from Pillow's"
    elif out is None and isinstance(error, ImageTooLarge):
        assert "limit" in str(error)
    image = photo(40, 24, seed=3)  # the workers are alive and serve the next job
    assert limited.process_image(image, ["invert"], grid=(2, 1), timeout=60).tobytes() == (
        pillow(image, "invert").tobytes()
    )
    assert tilechord_keys(redis_client) == []
