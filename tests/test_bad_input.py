"""Bad input, for real, at the Python API and at the command line.

Every damaged, hostile or misnamed file gives its typed error (``tilechord: error: ...``,
one line and a non-zero exit at the command line), and afterwards: the input is byte for
byte what it was, no output or temporary file exists, no ``tilechord:*`` key is left,
and the session's workers still serve the next job.  What can be told from a file's
header is refused before anything reaches Redis; what only a full decode reveals is
refused by the task that decodes it, before a single tile is stored (these files are small:
a PNG over 12.6 MP has its first tiles edited before damage further down is reached).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from images import encoded, photo
from PIL import Image
from procs import tilechord_cli
from reference import pillow
from workers import SUPPORT

import tilechord
from tilechord import Client, Settings
from tilechord.client import read_source
from tilechord.errors import TilechordError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- building bad files --------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    checksum = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def png_ihdr(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))


def header_only_png(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A well-formed PNG header declaring any size, with no pixel data at all."""
    return PNG_SIGNATURE + png_ihdr(width, height, depth, colour) + png_chunk(b"IEND", b"")


def compressed_bomb(side: int = 20_000) -> bytes:
    """A complete, valid 1-bit PNG of side x side black pixels: ~50 KB for 400 megapixels."""
    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return PNG_SIGNATURE + png_ihdr(side, side, 1, 0) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def good_png() -> bytes:
    return encoded(photo(200, 100, seed=2), "PNG")


def png_with_bad_header_crc() -> bytes:
    data = bytearray(good_png())
    data[29] ^= 0xFF  # the last byte of IHDR's CRC (8 signature + 8 length/type + 13 data + 4 crc)
    return bytes(data)


def png_cut_in_its_pixels() -> bytes:
    data = good_png()
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = encoded(photo(200, 100, seed=2), "JPEG", quality=90)
    return data[: len(data) // 2]


@dataclasses.dataclass(frozen=True)
class Bad:
    """One bad input: the file (``None``: no file at that path), its error, its message."""

    id: str
    name: str
    make: Callable[[], bytes] | None
    error: type[TilechordError]
    message: str  # a regular expression the error's message (and the CLI's line) matches
    header: bool = True  # refused from the header, before anything reaches Redis

    def write(self, directory: Path) -> Path:
        path = directory / self.name
        if self.make is not None:
            path.write_bytes(self.make())
        return path


CASES = [
    Bad("empty-file", "empty.png", lambda: b"", tilechord.InvalidImage, "empty"),
    Bad(
        "random-bytes",
        "noise.jpg",
        lambda: random.Random(6).randbytes(5000),
        tilechord.InvalidImage,
        "not an image",
    ),
    Bad(
        "text-named-png",
        "notes.png",
        lambda: b"these are notes, not pixels\n" * 20,
        tilechord.InvalidImage,
        "not an image",
    ),
    Bad("png-cut-after-header", "cut.png", lambda: good_png()[:33], tilechord.InvalidImage, "not an image"),
    Bad("png-bad-crc", "crc.png", png_with_bad_header_crc, tilechord.InvalidImage, "not an image"),
    Bad(
        "bomb-declared-10-gigapixels",
        "huge.png",
        lambda: header_only_png(100_000, 100_000),
        tilechord.ImageTooLarge,
        "pixels",
    ),
    Bad("bomb-compressed-400-megapixels", "bomb.png", compressed_bomb, tilechord.ImageTooLarge, "pixels"),
    Bad(
        "unsupported-format-svg",
        "drawing.svg",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect/></svg>\n',
        tilechord.InvalidImage,
        "not an image",
    ),
    Bad("missing-path", "missing.png", None, tilechord.InvalidImage, "no such file"),
    Bad(
        "png-cut-in-its-pixels", "half.png", png_cut_in_its_pixels, tilechord.InvalidImage, "truncated", False
    ),
    Bad("truncated-jpeg", "half.jpg", truncated_jpeg, tilechord.InvalidImage, "truncated", False),
]


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def key_writes(redis_client: redis.Redis) -> Iterator[Callable[[], list[str]]]:
    """Every ``tilechord:*`` key written while the test runs, from Redis's keyspace events.

    Not a sample taken afterwards: a key written and deleted again is seen too.
    """
    setting = redis_client.config_get("notify-keyspace-events")["notify-keyspace-events"]
    redis_client.config_set("notify-keyspace-events", "KA")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("__keyspace@*__:tilechord:*")
    while pubsub.get_message(timeout=1.0) is not None:  # the subscription is live once confirmed
        pass
    seen: list[str] = []

    def read() -> list[str]:
        while (event := pubsub.get_message(timeout=0.2)) is not None:
            if event["type"] == "pmessage":
                seen.append(f"{event['data'].decode()} {event['channel'].decode().split(':', 1)[1]}")
        return seen

    try:
        yield read
    finally:
        pubsub.close()
        redis_client.config_set("notify-keyspace-events", setting)


def assert_workers_serve_the_next_job(client: Client) -> None:
    image = photo(64, 40, seed=9)
    result = client.process_image(image, ["invert"], grid=(2, 1), timeout=60)
    assert result.tobytes() == pillow(image, "invert").tobytes()


def assert_refused_before_any_tile(case: Bad, writes: list[str], published: list[dict[str, Any]]) -> None:
    if case.header:
        assert writes == [], f"the client reached Redis for a file it could refuse from its header: {writes}"
        assert published == [], published
    else:  # only a full decode tells: the task that decodes refuses it (split, or for a JPEG
        # in a few tiles each edit, which decodes its own region), before any tile is stored
        assert writes, "expected the job to reach Redis"
        assert not [w for w in writes if ":tile:" in w or ":edited:" in w], writes
        tasks = [m["task"] for m in published]
        assert tasks[0] == "tilechord.split" and "tilechord.merge" not in tasks, tasks


# -- at the Python API ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gives_its_typed_error_at_the_api_and_leaves_nothing(
    client: Client,
    tmp_path: Path,
    case: Bad,
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    no_leftovers: None,
) -> None:
    path = case.write(tmp_path)
    before, files = digest(path), listing(tmp_path)
    if case.header:  # refused by planning alone, which never touches Redis
        with pytest.raises(case.error, match=case.message):
            client.plan(read_source(path, client.settings.max_bytes), ["invert"], (2, 1), None)
    with pytest.raises(case.error, match=case.message):
        client.process(path, ["invert"], grid=(2, 1), timeout=60)
    assert_refused_before_any_tile(case, key_writes(), messages())
    assert digest(path) == before
    assert listing(tmp_path) == files
    assert_workers_serve_the_next_job(client)


@pytest.mark.parametrize("case", [c for c in CASES if c.make is not None], ids=lambda c: c.id)
def test_bad_bytes_and_file_objects_give_the_same_typed_error(
    client: Client, tmp_path: Path, case: Bad, no_leftovers: None
) -> None:
    path = case.write(tmp_path)
    with pytest.raises(case.error, match=case.message):
        client.process(path.read_bytes(), ["invert"], timeout=60)
    with path.open("rb") as handle, pytest.raises(case.error, match=case.message):
        client.process(handle, ["invert"], timeout=60)


def test_an_unknown_output_format_is_refused_before_anything_is_enqueued(
    client: Client,
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    no_leftovers: None,
) -> None:
    with pytest.raises(tilechord.UnsupportedFormat, match="XYZ"):
        client.process(good_png(), ["invert"], format="XYZ")
    with pytest.raises(tilechord.UnsupportedFormat, match="JPEG cannot hold a mode RGBA"):
        client.process(encoded(photo(20, 20, "RGBA"), "PNG"), [], format="JPEG")
    assert key_writes() == []
    assert messages() == []  # not one task message was published


# -- configurable limits -------------------------------------------------------------------------


def test_pixel_limit_is_configurable_and_refuses_from_the_header(
    client: Client,
    settings: Settings,
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    no_leftovers: None,
) -> None:
    small = Client(dataclasses.replace(settings, max_pixels=100 * 100))
    try:
        with pytest.raises(tilechord.ImageTooLarge, match="TILECHORD_MAX_PIXELS"):
            small.process(encoded(photo(101, 100), "PNG"), ["invert"])
        with pytest.raises(tilechord.ImageTooLarge, match="TILECHORD_MAX_PIXELS"):
            small.process_image(photo(100, 101), ["invert"])
        assert key_writes() == []
        assert messages() == []
        image = photo(100, 100)
        assert small.process_image(image, ["invert"]).tobytes() == pillow(image, "invert").tobytes()
    finally:
        small.close()


def test_the_pixel_limit_in_force_is_the_configured_one_not_pillows_warning_threshold(
    settings: Settings,
) -> None:
    # 150 megapixels: under the documented default limit (178,956,970), over the threshold
    # (89,478,485) at which Pillow merely warns.  Planning reads only the header, so a
    # header-only PNG is enough, and cheap.
    header = header_only_png(15_000, 10_000, 1, 0)
    Client(Settings(redis_url=settings.redis_url)).plan(header, ["invert"], (2, 1), None)
    with pytest.raises(tilechord.ImageTooLarge, match="TILECHORD_MAX_PIXELS"):
        Client(dataclasses.replace(settings, max_pixels=150_000_000 - 1)).plan(
            header, ["invert"], (2, 1), None
        )


def test_byte_limit_is_configurable_for_paths_bytes_and_file_objects(
    settings: Settings,
    tmp_path: Path,
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    no_leftovers: None,
) -> None:
    data = good_png()
    path = tmp_path / "photo.png"
    path.write_bytes(data)
    small = Client(dataclasses.replace(settings, max_bytes=len(data) - 1))
    try:
        for source in (path, data):
            with pytest.raises(tilechord.ImageTooLarge, match="TILECHORD_MAX_BYTES"):
                small.process(source, ["invert"])
        with path.open("rb") as handle, pytest.raises(tilechord.ImageTooLarge, match="TILECHORD_MAX_BYTES"):
            small.process(handle, ["invert"])
        assert key_writes() == []
        assert messages() == []
    finally:
        small.close()
    exact = Client(dataclasses.replace(settings, max_bytes=len(data)))
    try:
        assert Image.open(path).size == (200, 100)
        assert len(exact.process(path, ["invert"])) > 0
    finally:
        exact.close()


def test_tile_and_grid_limits_are_configurable(
    client: Client,
    settings: Settings,
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    no_leftovers: None,
) -> None:
    limited = Client(dataclasses.replace(settings, max_tiles=4))
    source = encoded(photo(60, 40), "PNG")
    try:
        with pytest.raises(tilechord.InvalidGrid, match="TILECHORD_MAX_TILES"):
            limited.process(source, ["invert"], grid=(3, 2))
        with pytest.raises(tilechord.InvalidGrid):
            client.process(source, ["invert"], grid=(2000, 1))  # over the side limit
        with pytest.raises(tilechord.InvalidGrid):
            client.process(source, ["invert"], grid=(0, 1))
        assert key_writes() == []
        assert messages() == []
        assert len(limited.process(source, ["invert"], grid=(2, 2))) > 0
    finally:
        limited.close()


# -- at the command line -------------------------------------------------------------------------


def cli_env(redis_url: str, **extra: str) -> dict[str, str]:
    """The session's Redis (so no local cluster starts), and the test plugin that records messages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    path = os.pathsep.join(p for p in (str(SUPPORT), env.get("PYTHONPATH", "")) if p)
    plugin = {"TILECHORD_PLUGINS": "tilechord_testplugin", "PYTHONPATH": path}
    return {**env, **plugin, "TILECHORD_REDIS_URL": redis_url, **extra}


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return tilechord_cli("run", *args, env=env, cwd=cwd)


def assert_one_line_error(done: subprocess.CompletedProcess[str], message: str, password: str | None) -> str:
    assert done.returncode != 0, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tilechord: error: "), done.stderr
    assert done.stdout == ""
    if password:
        assert password not in done.stderr
    assert re.search(message, lines[0]), lines[0]
    return lines[0]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    return inputs, outputs


def password_of(url: str) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).password


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_at_the_cli_is_one_line_on_stderr_and_a_non_zero_exit(
    client: Client,
    redis_url: str,
    dirs: tuple[Path, Path],
    case: Bad,
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    no_leftovers: None,
) -> None:
    inputs, outputs = dirs
    path = case.write(inputs)
    before, files = digest(path), listing(inputs)
    out = outputs / "out.png"
    done = run_cli(
        str(path), "-o", str(out), "--op", "invert", "--timeout", "60", env=cli_env(redis_url), cwd=inputs
    )
    assert_one_line_error(done, case.message, password_of(redis_url))
    assert_refused_before_any_tile(case, key_writes(), messages())
    assert digest(path) == before
    assert listing(inputs) == files
    assert listing(outputs) == []  # no output, no .part file
    assert_workers_serve_the_next_job(client)


def test_cli_output_in_a_missing_directory_is_refused_before_anything_is_enqueued(
    client: Client,
    redis_url: str,
    dirs: tuple[Path, Path],
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
) -> None:
    inputs, outputs = dirs
    path = inputs / "photo.png"
    path.write_bytes(good_png())
    before = digest(path)
    done = run_cli(
        str(path), "-o", str(outputs / "no" / "such" / "out.png"), env=cli_env(redis_url), cwd=inputs
    )
    assert_one_line_error(done, "does not exist", password_of(redis_url))
    assert key_writes() == []
    assert messages() == []  # the CLI loads the recording plugin too (cli_env)
    assert digest(path) == before
    assert listing(inputs) == ["photo.png"] and listing(outputs) == []


def test_cli_unknown_output_format_is_refused_before_anything_is_enqueued(
    redis_url: str,
    dirs: tuple[Path, Path],
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
) -> None:
    inputs, outputs = dirs
    path = inputs / "photo.png"
    path.write_bytes(good_png())
    done = run_cli(str(path), "-o", str(outputs / "out.xyz"), env=cli_env(redis_url), cwd=inputs)
    assert_one_line_error(done, "format", password_of(redis_url))
    done = run_cli(
        str(path), "-o", str(outputs / "out.png"), "--format", "NOPE", env=cli_env(redis_url), cwd=inputs
    )
    assert_one_line_error(done, "NOPE", password_of(redis_url))
    assert key_writes() == []
    assert messages() == []
    assert listing(outputs) == []


@pytest.mark.parametrize(
    ("variable", "value", "args", "error"),
    [
        ("TILECHORD_MAX_BYTES", "1000", [], "TILECHORD_MAX_BYTES"),
        ("TILECHORD_MAX_PIXELS", "19999", [], "TILECHORD_MAX_PIXELS"),  # the image is 200x100
        ("TILECHORD_MAX_TILES", "4", ["--grid", "3x2"], "TILECHORD_MAX_TILES"),
    ],
)
def test_cli_limits_come_from_the_environment(
    redis_url: str,
    dirs: tuple[Path, Path],
    key_writes: Callable[[], list[str]],
    messages: Callable[[], list[dict[str, Any]]],
    variable: str,
    value: str,
    args: list[str],
    error: str,
) -> None:
    inputs, outputs = dirs
    path = inputs / "photo.png"
    path.write_bytes(good_png())
    env = cli_env(redis_url, **{variable: value})
    done = run_cli(str(path), "-o", str(outputs / "out.png"), "--op", "invert", *args, env=env, cwd=inputs)
    assert_one_line_error(done, error, password_of(redis_url))
    assert key_writes() == []
    assert messages() == []
    assert listing(outputs) == []
    # the same run within the limit succeeds
    done = run_cli(
        str(path), "-o", str(outputs / "out.png"), "--op", "invert", env=cli_env(redis_url), cwd=inputs
    )
    assert done.returncode == 0, done.stderr
    assert listing(outputs) == ["out.png"]
