"""The command line, run as a user runs it: a real `tilechord` process.

With no Redis configured it starts its own (embedded Redis plus a worker pool) and must
leave no process behind; with TILECHORD_REDIS_URL it uses the workers already there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO

import pytest
from images import photo
from PIL import Image
from procs import processes_with, wait_until_gone
from reference import pillow

from tilechord.local import WorkerPool


def tilechord(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tilechord", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def local_env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    env["TILECHORD_TEST_MARKER"] = marker
    return env


@pytest.fixture(scope="module")
def photo_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "photo.jpg"
    photo(301, 199, seed=11).save(path, quality=92)  # odd width and height
    return path


@pytest.mark.parametrize(
    ("spec", "grid"),
    [
        ("gaussian_blur:radius=6", "2x1"),
        ("gaussian_blur:radius=6", "1x1"),
        ("gaussian_blur:radius=6", "3x1"),
        ("gaussian_blur:radius=6", "2x2"),
        ("gaussian_blur:radius=6", "4x3"),
        ("grayscale", "4x3"),
        ("invert", "2x2"),
        ("sharpen", "3x1"),
    ],
)
@pytest.mark.slow
def test_run_without_redis_matches_pillow_and_leaves_no_process(
    photo_jpeg: Path, tmp_path: Path, spec: str, grid: str
) -> None:
    marker = uuid.uuid4().hex
    out = tmp_path / "out.png"
    before = photo_jpeg.read_bytes()
    done = tilechord(
        "run",
        str(photo_jpeg),
        "-o",
        str(out),
        "--op",
        spec,
        "--grid",
        grid,
        "--workers",
        "2",
        env=local_env(marker),
    )
    assert done.returncode == 0, done.stderr
    expected = pillow(Image.open(photo_jpeg), spec)
    result = Image.open(out)
    assert result.format == "PNG"
    assert (result.mode, result.size) == (expected.mode, expected.size)
    assert result.tobytes() == expected.tobytes()
    assert photo_jpeg.read_bytes() == before
    assert wait_until_gone(marker) == []
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_run_against_configured_redis_is_served_by_a_separately_started_worker(
    worker: WorkerPool, redis_url: str, photo_jpeg: Path, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    env = {**local_env(marker), "TILECHORD_REDIS_URL": redis_url}
    out = tmp_path / "blurred.jpg"
    done = tilechord("run", str(photo_jpeg), "-o", str(out), "--op", "gaussian_blur:radius=3", env=env)
    assert done.returncode == 0, done.stderr
    assert Image.open(out).format == "JPEG"
    assert processes_with(marker) == []  # it started nothing of its own


@pytest.mark.slow
def test_ctrl_c_stops_the_local_cluster_and_writes_nothing(photo_jpeg: Path, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    big = tmp_path / "big.png"
    photo(1500, 1000, seed=2).save(big)
    out = tmp_path / "out.png"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tilechord",
            "run",
            str(big),
            "-o",
            str(out),
            "--op",
            "median:size=15",
            "--workers",
            "2",
        ],
        env=local_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(processes_with(marker)) < 4 and time.monotonic() < deadline:  # us, redis, worker, children
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert wait_until_gone(marker) == []
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.jpg", "-o", "out.png"], "no such file"),
        (["run", "{photo}", "-o", "no/such/dir/out.png"], "does not exist"),
        (["run", "{photo}", "-o", "out.png", "--op", "gausian_blur"], "did you mean gaussian_blur"),
        (["run", "{photo}", "-o", "out.png", "--op", "gaussian_blur:radius=-3"], "radius"),
        (["run", "{photo}", "-o", "out.png", "--grid", "2by2"], "COLSxROWS"),
        (["run", "{photo}", "-o", "out.xyz"], "format"),
        (["run", "{text}", "-o", "out.png"], "not an image"),
    ],
)
def test_errors_are_one_line_with_a_non_zero_exit_and_start_nothing(
    photo_jpeg: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("these are notes, not pixels\n")
    marker = uuid.uuid4().hex
    argv = [a.format(photo=photo_jpeg, text=text) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "tilechord", *argv],
        capture_output=True,
        text=True,
        env=local_env(marker),
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilechord: error: "), done.stderr
    assert message in lines[0]
    assert not (tmp_path / "out.png").exists()
    assert processes_with(marker) == []


def test_ops_lists_every_operation_with_parameters_and_reach() -> None:
    done = tilechord("ops")
    assert done.returncode == 0, done.stderr
    for name in ("grayscale", "invert", "gaussian_blur", "sharpen"):
        assert name in done.stdout
    blur = next(line for line in done.stdout.splitlines() if line.startswith("gaussian_blur "))
    assert "radius" in blur and "neighbourhood" in blur and "px" in blur


def test_help_explains_each_command() -> None:
    top = tilechord("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("run", "ops", "up"))
    run = tilechord("run", "--help")
    assert "--op" in run.stdout and "--grid" in run.stdout and "TILECHORD_REDIS_URL" in run.stdout


def test_readme_operations_table_is_what_tilechord_ops_prints() -> None:
    done = tilechord(
        "ops", "--markdown", env={k: v for k, v in os.environ.items() if k != "TILECHORD_PLUGINS"}
    )
    assert done.returncode == 0, done.stderr
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert done.stdout.strip() in readme


def _read_until(stream: IO[str], pattern: str, timeout: float) -> tuple[re.Match[str] | None, str]:
    """Read lines from *stream* until one matches *pattern* (a thread, so a hang cannot block us)."""
    seen: list[str] = []
    found: list[re.Match[str]] = []

    def reader() -> None:
        for line in stream:
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                found.append(match)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    return (found[0] if found else None), "".join(seen)


@pytest.mark.slow
def test_up_serves_another_shell_and_ctrl_c_leaves_no_process(photo_jpeg: Path, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilechord", "up", "--workers", "2"],
        env=local_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        match, shown = _read_until(proc.stdout, r"^\s*export TILECHORD_REDIS_URL=(redis://\S+)$", 120)  # type: ignore[arg-type]
        assert match is not None, shown + (proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        url = match.group(1)
        assert re.search(r"flower\s+http://127\.0\.0\.1:\d+", shown), shown
        assert re.search(r"redis\s+redis://:\*\*\*@127\.0\.0\.1:\d+/0", shown), shown
        assert len(processes_with(marker)) >= 5  # us, valkey, the worker and its two children, Flower

        other = f"other-{uuid.uuid4().hex}"
        out = tmp_path / "out.png"
        done = tilechord("run", str(photo_jpeg), "-o", str(out), "--op", "gaussian_blur:radius=6", "--grid",
                         "3x2", "--redis", url, env=local_env(other))  # fmt: skip
        assert done.returncode == 0, done.stderr
        expected = pillow(Image.open(photo_jpeg), "gaussian_blur:radius=6")
        assert Image.open(out).tobytes() == expected.tobytes()
        assert processes_with(other) == []  # served by `up`, started nothing of its own

        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), stderr
    assert "stopped" in stderr
    assert wait_until_gone(marker) == []
