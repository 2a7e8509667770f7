"""The command line's rough edges (issue #18), run as a user runs it, against real workers.

Unwritable outputs are refused before anything is enqueued (no task message, no key); a
wrong input is named as the input; one input goes into a directory; one image on a
terminal shows a bar of tiles and a closing line (a real pseudo-terminal), piped it shows
nothing; a batch's summary comes after its bar's last update and agrees with it; Ctrl-C
of a run stops its running tiles.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from images import photo
from PIL import Image, ImageOps
from procs import tilechord_cli, wait_for
from reference import pillow
from workers import tilechord_keys, worker_env

from tilechord import Client
from tilechord.local import WorkerPool
from tilechord.worker.keys import JobKeys

BLUR = "gaussian_blur:radius=3"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def user_env(redis_url: str) -> dict[str, str]:
    """A user's environment pointed at the test Redis, with the test plugins (they record messages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    return {**env, **worker_env(redis_url)}


def cli(*args: str, redis_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return tilechord_cli("run", *args, "--timeout", "120", env=user_env(redis_url), cwd=cwd, timeout=180)


def on_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """Run ``tilechord ARGS`` on a real pseudo-terminal (stdin, stdout, stderr); its status and screen."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilechord", *args],
        stdin=secondary, stdout=secondary, stderr=secondary, env={**env, "TERM": "xterm"}, cwd=cwd,
    )  # fmt: skip
    os.close(secondary)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    return status, b"".join(chunks).decode("utf-8", "replace")


def same_as_pillow(result: Path, source: Path, spec: str) -> bool:
    expected = pillow(Image.open(source), spec)
    got = Image.open(result)
    return (got.mode, got.size, got.tobytes()) == (expected.mode, expected.size, expected.tobytes())


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A working directory with two small photos, one with an upper-case extension, and a file."""
    photo(120, 80, seed=1).save(tmp_path / "one.png")
    photo(90, 70, seed=2).save(tmp_path / "UPPER.PNG", "PNG")
    (tmp_path / "afile").write_bytes(b"not a directory")
    return tmp_path


# -- 3: an unwritable output is refused before anything is enqueued -------------------------------


UNWRITABLE = [
    # (argv after `run`, what the error line must name); /sys takes no new file, even from root
    (["one.png", "-o", "/sys/out.png"], "/sys/out.png"),
    (["one.png", "-o", "afile/out.png"], "afile/out.png"),
    (["one.png", "-o", "missing/out.png"], "missing/out.png"),
    (["one.png", "-o", "taken.png"], "taken.png"),  # a directory where the file must go: into it
    (["one.png", "UPPER.PNG", "-o", "/sys/edited/"], "/sys/edited"),
    (["one.png", "UPPER.PNG", "-o", "edited/"], "edited/one.png"),  # edited/one.png is a directory
]


@pytest.mark.parametrize(("args", "named"), UNWRITABLE)
def test_an_unwritable_output_is_refused_before_anything_is_enqueued(
    worker: WorkerPool,
    redis_url: str,
    redis_client: redis.Redis,
    messages: Callable[[], list[dict[str, Any]]],
    images: Path,
    args: list[str],
    named: str,
) -> None:
    (images / "taken.png").mkdir()
    (images / "taken.png" / "one.png").mkdir()  # into the directory: the file's place is a directory
    (images / "edited" / "one.png").mkdir(parents=True)
    before = sorted(p.relative_to(images) for p in images.rglob("*"))
    done = cli(*args, "--op", BLUR, redis_url=redis_url, cwd=images)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilechord: error: "), done.stderr
    assert named in lines[0] and ".part" not in lines[0], lines[0]
    assert messages() == []  # not one task message was sent
    assert tilechord_keys(redis_client) == []
    assert sorted(p.relative_to(images) for p in images.rglob("*")) == before


# -- 5: a wrong input is reported as a wrong input; one input into a directory --------------------


def test_a_missing_input_directory_is_named_as_the_input(
    worker: WorkerPool, redis_url: str, messages: Callable[[], list[dict[str, Any]]], images: Path
) -> None:
    done = cli("nosuchdir/", "-o", "out/", redis_url=redis_url, cwd=images)
    assert done.returncode == 1
    assert done.stderr == "tilechord: error: the input directory nosuchdir/ does not exist\n"
    assert not (images / "out").exists() and messages() == []


def test_two_inputs_and_a_file_name_fail_clearly_and_create_nothing(
    worker: WorkerPool, redis_url: str, messages: Callable[[], list[dict[str, Any]]], images: Path
) -> None:
    done = cli("one.png", "UPPER.PNG", "-o", "single.png", redis_url=redis_url, cwd=images)
    assert done.returncode == 1
    assert done.stderr.startswith(
        "tilechord: error: -o single.png names a file, but 2 images need a directory"
    )
    assert done.stderr.count("\n") == 1
    assert not (images / "single.png").exists() and messages() == []


@pytest.mark.parametrize("output", ["newdir/", "existing"])
def test_one_input_into_a_directory_writes_its_name_there_keeping_the_extension_case(
    worker: WorkerPool, redis_url: str, redis_client: redis.Redis, images: Path, output: str
) -> None:
    (images / "existing").mkdir()
    for name in ("one.png", "UPPER.PNG"):
        done = cli(name, "-o", output, "--op", BLUR, redis_url=redis_url, cwd=images)
        assert done.returncode == 0, done.stderr
        assert (done.stdout, done.stderr) == ("", "")  # not a terminal: nothing, as for any single image
    directory = images / output.rstrip("/")
    assert sorted(p.name for p in directory.iterdir()) == ["UPPER.PNG", "one.png"]
    for name in ("one.png", "UPPER.PNG"):
        assert same_as_pillow(directory / name, images / name, BLUR), name
    assert tilechord_keys(redis_client) == []


def test_a_batch_keeps_each_extensions_case(worker: WorkerPool, redis_url: str, images: Path) -> None:
    done = cli("one.png", "UPPER.PNG", "-o", "out/", "--op", BLUR, redis_url=redis_url, cwd=images)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (images / "out").iterdir()) == ["UPPER.PNG", "one.png"]
    assert same_as_pillow(images / "out" / "UPPER.PNG", images / "UPPER.PNG", BLUR)


# -- 4: one image on a terminal shows a bar of tiles and one closing line -------------------------


def test_one_image_on_a_terminal_shows_a_bar_of_tiles_then_one_line(
    worker: WorkerPool, redis_url: str, images: Path
) -> None:
    photo(400, 300, seed=3).save(images / "big.png")
    status, screen = on_terminal(
        ["run", "big.png", "-o", "out.png", "--op", BLUR, "--grid", "3x2"], user_env(redis_url), images
    )
    assert status == 0, screen
    text = ANSI.sub("", screen)
    assert "tiles" in text and "6/6" in text and "━" in text, text  # the bar, counting tiles
    size = (images / "out.png").stat().st_size
    last = [line for line in re.split(r"[\r\n]+", text) if line.strip()][-1]
    expected = rf"wrote out\.png \({size / 1000:.1f} kB, 6 tiles, \d+\.\d s\)"
    assert re.fullmatch(expected, last.strip()), repr(last)
    assert same_as_pillow(images / "out.png", images / "big.png", BLUR)


def test_one_image_with_quiet_on_a_terminal_shows_nothing(
    worker: WorkerPool, redis_url: str, images: Path
) -> None:
    status, screen = on_terminal(["run", "one.png", "-o", "out.png", "--quiet"], user_env(redis_url), images)
    assert status == 0, screen
    assert ANSI.sub("", screen).strip() == ""
    assert (images / "out.png").exists()


def test_one_image_piped_prints_nothing(worker: WorkerPool, redis_url: str, images: Path) -> None:
    done = cli("one.png", "-o", "out.png", "--op", BLUR, "--grid", "2x2", redis_url=redis_url, cwd=images)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert same_as_pillow(images / "out.png", images / "one.png", BLUR)


# -- 10: a batch's summary comes after the bar's last update and agrees with it; "1 tile" ---------


def test_a_batch_summary_on_a_terminal_follows_the_last_bar_and_agrees_with_it(
    worker: WorkerPool, redis_url: str, images: Path
) -> None:
    for i in range(3):
        photo(100, 60, seed=i).save(images / f"t{i}.png")
    (images / "t3.png").write_bytes(b"not an image")
    names = [f"t{i}.png" for i in range(4)]
    status, screen = on_terminal(
        ["run", *names, "-o", "out", "--op", BLUR, "--grid", "2x2"], user_env(redis_url), images
    )
    assert status == 1, screen
    lines = re.split(r"[\r\n]+", ANSI.sub("", screen))
    summary_at = [n for n, line in enumerate(lines) if " images written to " in line]
    assert len(summary_at) == 1, lines
    summary = re.fullmatch(
        r"3 of 4 images written to out, 1 failed; 12 tiles in \d+\.\d s \((\d+\.\d) images/s\)",
        lines[summary_at[0]].strip(),
    )
    assert summary is not None, lines[summary_at[0]]
    bar = re.compile(r".*images .*?(\d+)/4 +tiles (\d+)/(\d+) +(\d+\.\d) images/s(.*)")
    renders = [(n, m) for n, line in enumerate(lines) if (m := bar.fullmatch(line.strip()))]
    assert renders, lines
    at, last = renders[-1]
    assert at < summary_at[0], lines  # the summary is below the bar's last render
    assert last.group(1) == "4" and last.group(2) == last.group(3) == "12", last.group(0)
    assert last.group(4) == summary.group(1), (last.group(0), summary.group(0))  # the same rate
    assert "1 failed" in last.group(5), last.group(0)
    text = "\n".join(lines)
    assert text.count("tilechord: error: t3.png: ") == 1


def test_a_one_tile_image_is_one_tile_in_the_lines_and_the_summary(
    worker: WorkerPool, redis_url: str, images: Path
) -> None:
    (images / "in").mkdir()
    photo(50, 40).save(images / "in" / "small.png")
    done = cli("in", "-o", "out", "--grid", "1x1", redis_url=redis_url, cwd=images)
    assert done.returncode == 0, done.stderr
    first, summary = done.stdout.splitlines()
    assert re.fullmatch(
        r"\[1/1\] ok     in/small\.png -> out/small\.png \(1 tile, [\d.]+ s, [\d.]+ images/s\)", first
    )
    assert re.fullmatch(
        r"1 of 1 image written to out, 0 failed; 1 tile in [\d.]+ s \([\d.]+ images/s\)", summary
    )


# -- 1: Ctrl-C of `tilechord run` against running workers stops its running tiles ------------------


def _running_edits(client: Client) -> int:
    jobs = [k.decode().split(":")[1] for k in client.store.client.scan_iter(match="tilechord:*:live")]
    ids = [JobKeys(job).task_id("edit", i) for job in jobs for i in range(2)]
    return sum(AsyncResult(task, app=client.app).state == "STARTED" for task in ids)


@pytest.mark.slow
@pytest.mark.usefixtures("no_leftovers")
def test_ctrl_c_of_a_run_stops_its_running_tiles_and_exits_130(
    client: Client, redis_url: str, tmp_path: Path
) -> None:
    photo(1600, 1200, seed=5).save(tmp_path / "big.png")  # median 15: seconds a tile
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilechord", "run", "big.png", "-o", "out.png", "--op", "median:size=15",
         "--grid", "2x1", "--timeout", "300"],
        env=user_env(redis_url), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: _running_edits(client) == 2, timeout=60), "the tiles never ran"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr == "tilechord: interrupted\n"
    assert not (tmp_path / "out.png").exists()
    small = photo(64, 48)
    started = time.monotonic()
    result = client.process_image(small, ["invert"], grid=(1, 1), timeout=5.0)  # only if the tiles stopped
    assert result.tobytes() == ImageOps.invert(small).tobytes()
    assert time.monotonic() - started < 5.0
