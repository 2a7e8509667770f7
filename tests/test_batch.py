"""Batches: `tilechord run a b c -o out/` and `tilechord.map`, through the session's real workers.

Every output is compared with Pillow run directly on the whole image.
"""

from __future__ import annotations

import io
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult
from images import encoded, photo
from PIL import Image
from procs import tilechord_cli, wait_for
from reference import pillow
from workers import tilechord_keys

import tilechord
from tilechord import Client, InvalidImage, MapProgress, MapResult, UnknownOperation
from tilechord.cli import plan_outputs, safe_name
from tilechord.errors import JobGone
from tilechord.local import WorkerPool
from tilechord.worker.keys import JobKeys, new_job_id

BLUR = "gaussian_blur:radius=3"


def blurred(path: Path | bytes) -> Image.Image:
    """Pillow's own answer for --op gaussian_blur:radius=3, on the whole image."""
    image = Image.open(io.BytesIO(path) if isinstance(path, bytes) else path)
    return pillow(image, BLUR)


def same_pixels(result: Image.Image, expected: Image.Image) -> bool:
    return (result.mode, result.size, result.tobytes()) == (expected.mode, expected.size, expected.tobytes())


def run_cli(*args: str, redis_url: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    return tilechord_cli("run", *args, "--redis", redis_url, env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def fifty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """48 good images in assorted sizes and formats, one non-image, one truncated JPEG."""
    folder = tmp_path_factory.mktemp("fifty")
    good = []
    for i in range(48):
        ext = ("jpg", "png", "tif")[i % 3]
        name = f"img-{i:02d}.{ext}"
        photo(60 + i, 40 + (i * 7) % 30, seed=i).save(folder / name)
        good.append(name)
    (folder / "notes.jpg").write_text("not an image at all\n")
    whole = io.BytesIO()
    photo(300, 200, seed=99).save(whole, "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 3])
    return folder, good, ["notes.jpg", "truncated.jpg"]


@pytest.mark.slow
def test_batch_of_50_with_2_corrupt_writes_48_correct_outputs_names_2_errors_and_exits_1(
    worker: WorkerPool, redis_url: str, fifty: tuple[Path, list[str], list[str]], tmp_path: Path
) -> None:
    folder, good, bad = fifty
    out = tmp_path / "out"
    done = run_cli(str(folder), "-o", f"{out}/", "--op", BLUR, "--grid", "2x2", "--format", "png",
                   redis_url=redis_url)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).stem + ".png" for n in good)
    for name in good:
        assert same_pixels(Image.open(out / (Path(name).stem + ".png")), blurred(folder / name)), name
    errors = [line for line in done.stderr.splitlines() if line.startswith("tilechord: error: ")]
    assert len(errors) == 2, done.stderr
    for name in bad:
        assert sum(f"{folder / name}: " in e for e in errors) == 1, (name, errors)
    assert any("not an image" in e for e in errors)
    # plain lines, one per image, then a summary (stdout is not a terminal here)
    lines = done.stdout.splitlines()
    assert sum(" ok " in line for line in lines) == 48
    assert sum(" failed " in line for line in lines) == 2
    summary = rf"48 of 50 images written to {re.escape(str(out))}, 2 failed; 192 tiles in [\d.]+ s "
    assert re.fullmatch(summary + r"\([\d.]+ images/s\)", lines[-1]), lines[-1]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_every_finished_image_is_reported_with_its_tiles_and_a_running_rate(
    worker: WorkerPool, redis_url: str, tmp_path: Path
) -> None:
    for i in range(3):
        photo(80, 60, seed=i).save(tmp_path / f"p{i}.png")
    out = tmp_path / "out"
    done = run_cli(*(str(tmp_path / f"p{i}.png") for i in range(3)), "-o", str(out), "--op", BLUR,
                   "--grid", "3x2", redis_url=redis_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    for line in lines[:3]:
        pattern = r"\[\d/3\] ok     \S+p\d\.png -> \S+p\d\.png \(6 tiles, [\d.]+ s, [\d.]+ images/s\)"
        assert re.fullmatch(pattern, line), line
    assert lines[3].startswith("3 of 3 images written to") and "18 tiles" in lines[3]
    assert done.stderr == ""


def test_quiet_prints_nothing_but_errors(worker: WorkerPool, redis_url: str, tmp_path: Path) -> None:
    photo(50, 40, seed=1).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"\x89PNG but not really")
    done = run_cli(str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "out"), "-q",
                   "--op", BLUR, redis_url=redis_url)  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "b.png: " in lines[0] and lines[1].endswith("1 of 2 images failed")
    assert same_pixels(Image.open(tmp_path / "out" / "a.png"), blurred(tmp_path / "a.png"))


def test_a_quoted_glob_and_a_directory_expand_to_their_images(
    worker: WorkerPool, redis_url: str, tmp_path: Path
) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    for name in ("a.png", "b.png", "c.jpg"):
        photo(40, 30, seed=len(name)).save(shots / name)
    (shots / "readme.txt").write_text("not an image, not picked from a directory\n")
    (shots / ".hidden.png").write_bytes(b"")
    done = run_cli(str(shots / "*.png"), "-o", str(tmp_path / "globbed"), "--op", "invert",
                   redis_url=redis_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "globbed").iterdir()) == ["a.png", "b.png"]
    expected = pillow(Image.open(shots / "b.png"), "invert")
    assert same_pixels(Image.open(tmp_path / "globbed" / "b.png"), expected)
    done = run_cli(str(shots), "-o", str(tmp_path / "all"), "--op", "invert", redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["a.png", "b.png", "c.jpg"]
    assert Image.open(tmp_path / "all" / "c.jpg").format == "JPEG"  # each input's own format


def test_a_nasty_input_name_cannot_write_outside_the_output_directory(
    worker: WorkerPool, redis_url: str, tmp_path: Path
) -> None:
    nasty = "..\\..\\evil\n\x1b[31m.png"  # backslashes, a newline, an escape sequence
    src = tmp_path / "in"
    src.mkdir()
    photo(40, 30, seed=3).save(src / nasty, "PNG")
    photo(40, 30, seed=4).save(src / "...png", "PNG")
    out = tmp_path / "out"
    done = run_cli(str(src / nasty), str(src / "...png"), "-o", str(out), "--op", "invert",
                   redis_url=redis_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout  # names are shown escaped, never as terminal controls
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([safe_name("..\\..\\evil\n\x1b[31m", ".png"), safe_name("..", ".png")])
    for name in written:
        assert "\n" not in name and "\\" not in name and "\x1b" not in name and not name.startswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert same_pixels(
        Image.open(out / safe_name("..", ".png")), pillow(Image.open(src / "...png"), "invert")
    )


def test_inputs_with_the_same_name_get_numbered_outputs_in_the_order_given(
    worker: WorkerPool, redis_url: str, tmp_path: Path
) -> None:
    for folder, seed in (("one", 1), ("two", 2)):
        (tmp_path / folder).mkdir()
        photo(50, 40, seed=seed).save(tmp_path / folder / "x.png")
    photo(50, 40, seed=3).save(tmp_path / "one" / "x.jpg")
    inputs = [tmp_path / "one" / "x.png", tmp_path / "two" / "x.png", tmp_path / "one" / "x.jpg"]
    out = tmp_path / "out"
    assert [p.name for p in plan_outputs(inputs, out, "PNG")] == ["x.png", "x-2.png", "x-3.png"]
    done = run_cli(*map(str, inputs), "-o", str(out), "--op", BLUR, "--format", "png", redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    for source, name in zip(inputs, ["x.png", "x-2.png", "x-3.png"], strict=True):
        assert same_pixels(Image.open(out / name), blurred(source)), name


def test_a_bad_operation_fails_once_before_anything_runs(redis_url: str, tmp_path: Path) -> None:
    photo(50, 40).save(tmp_path / "a.png")
    photo(50, 40).save(tmp_path / "b.png")
    done = run_cli(str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "out"),
                   "--op", "gausian_blur", redis_url=redis_url)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "did you mean gaussian_blur" in done.stderr
    assert not (tmp_path / "out").exists()


def test_on_a_terminal_a_progress_bar_shows_images_tiles_and_rate(
    worker: WorkerPool, redis_url: str, tmp_path: Path
) -> None:
    for i in range(3):
        photo(60, 40, seed=i).save(tmp_path / f"t{i}.png")
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    env.update(COLUMNS="160", TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tilechord", "run", *(str(tmp_path / f"t{i}.png") for i in range(3)),
         "-o", str(tmp_path / "out"), "--op", BLUR, "--grid", "2x2", "--redis", redis_url],
        stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env,
    )  # fmt: skip
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=120) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert "3/3" in screen and "tiles 12/12" in screen and "images/s" in screen, screen
    assert "━" in screen  # the bar itself
    assert "[1/3] ok" not in screen  # no plain lines on a terminal
    assert len(list((tmp_path / "out").iterdir())) == 3


# -- the Python API ----------------------------------------------------------------------------


def test_map_yields_every_source_once_with_errors_as_values(client: Client, no_leftovers: None) -> None:
    images = [photo(70 + i, 50, seed=i) for i in range(7)]
    sources: list[bytes] = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        sources.append(buffer.getvalue())
    sources.insert(3, b"definitely not an image")
    results = list(client.map(sources, [BLUR], grid=(2, 2), jobs=3))
    assert sorted(r.index for r in results) == list(range(8))
    for result in results:
        assert isinstance(result, MapResult) and result.source is sources[result.index]
        if result.index == 3:
            assert not result.ok and isinstance(result.error, InvalidImage)
            with pytest.raises(InvalidImage):
                result.unwrap()
            continue
        assert result.ok and result.tiles == 4 and result.job_id
        assert same_pixels(Image.open(io.BytesIO(result.unwrap())), blurred(sources[result.index]))


def test_map_keeps_at_most_jobs_in_flight_and_reports_progress_to_the_end(
    client: Client, redis_client: redis.Redis, no_leftovers: None
) -> None:
    images = []
    for i in range(9):
        buffer = io.BytesIO()
        photo(64, 48, seed=i).save(buffer, "PNG")
        images.append(buffer.getvalue())
    seen: list[MapProgress] = []
    live_jobs: list[int] = []

    def on_progress(state: MapProgress) -> None:
        seen.append(state)
        live_jobs.append(sum(1 for _ in redis_client.scan_iter(match="tilechord:*:live", count=1000)))

    finished = 0
    for result in client.map(iter(images), ["test_slow:seconds=0.2", "invert"], grid=(2, 1), jobs=2,
                             on_progress=on_progress):  # fmt: skip
        assert result.ok, result.error
        finished += 1
    assert finished == 9
    assert max(s.running for s in seen) == 2
    assert max(live_jobs) <= 2  # Redis agrees: never more than two jobs open at once
    assert all(s.total is None for s in seen)  # an iterator has no length
    assert seen[-1] == MapProgress(done=9, failed=0, total=None, running=0, tiles_done=18, tiles_total=18)
    tiles = [s.tiles_done for s in seen]
    assert tiles == sorted(tiles)


def test_map_closed_early_cancels_the_jobs_in_flight(client: Client, no_leftovers: None) -> None:
    buffer = io.BytesIO()
    photo(64, 48).save(buffer, "PNG")
    results = client.map([buffer.getvalue()] * 6, ["test_slow:seconds=0.3"], grid=(1, 1), jobs=2)
    first = next(results)
    assert first.ok
    results.close()  # the jobs still in flight are revoked and their keys deleted


def test_map_rejects_a_bad_pipeline_before_submitting_anything(client: Client) -> None:
    with pytest.raises(UnknownOperation):
        next(client.map([b"whatever"], ["no_such_op"]))


def test_job_get_reports_tile_progress_up_to_the_total(client: Client, no_leftovers: None) -> None:
    buffer = io.BytesIO()
    source = photo(90, 60, seed=5)
    source.save(buffer, "PNG")
    job = client.submit(buffer.getvalue(), ["test_slow:seconds=0.2", BLUR], grid=(3, 2))
    calls: list[tuple[int, int]] = []
    data = job.get(on_progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (6, 6)
    assert all(total == 6 for _, total in calls)
    assert [d for d, _ in calls] == sorted({d for d, _ in calls})  # rising, each count once
    assert same_pixels(Image.open(io.BytesIO(data)), blurred(buffer.getvalue()))


def test_map_sends_small_images_several_to_a_task_and_a_bad_one_fails_alone(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    sources: list[bytes] = []
    for i in range(21):
        buffer = io.BytesIO()
        photo(60 + i, 40, seed=i).save(buffer, "PNG")
        sources.append(buffer.getvalue())
    # A header the client accepts, pixels the worker cannot decode: it fails in its batch.
    sources[5] = sources[5][: len(sources[5]) // 2]
    results = sorted(client.map(sources, [BLUR], grid="auto", batch=8), key=lambda r: r.index)
    assert [r.index for r in results] == list(range(21))
    assert isinstance(results[5].error, InvalidImage), results[5]
    for result in results[:5] + results[6:]:
        assert result.ok, result.error
        assert result.tiles == 1
        assert same_pixels(Image.open(io.BytesIO(result.unwrap())), blurred(sources[result.index]))
    tasks = [m["task"] for m in messages()]
    assert "tilechord.split" not in tasks and "tilechord.edit" not in tasks
    assert 3 <= tasks.count("tilechord.batch") < 21  # 21 images, 8 to a task at most


def test_a_batch_carries_each_jobs_own_metadata_and_format(client: Client, no_leftovers: None) -> None:
    image = photo(50, 40, seed=3)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=70, dpi=(300, 300))
    png = io.BytesIO()
    image.save(png, "PNG")
    results = sorted(client.map([jpeg.getvalue(), png.getvalue()] * 3, ["invert"], grid="auto"),
                     key=lambda r: r.index)  # fmt: skip
    for result in results:
        out = Image.open(io.BytesIO(result.unwrap()))
        assert out.format == ("JPEG" if result.index % 2 == 0 else "PNG")
        if out.format == "JPEG":
            assert out.info.get("dpi") == (300, 300)
            assert out.quantization == Image.open(jpeg).quantization


# -- batches of small images: one task, one unit in Redis ----------------------------------------


def _batch_ids(r: redis.Redis) -> list[str]:
    """The ids of the batches open in Redis now (each has a hash of sources)."""
    return [key.decode().split(":")[1] for key in r.scan_iter(match="tilechord:*:sources", count=1000)]


@pytest.mark.slow
def test_a_worker_killed_mid_batch_still_gives_every_image_once_and_right(
    client: Client, worker: WorkerPool, redis_client: redis.Redis, no_leftovers: None
) -> None:
    images = [photo(40 + i, 30, seed=i) for i in range(6)]
    sources = [encoded(image, "PNG") for image in images]
    killed: list[int] = []

    def kill_the_batch_mid_way() -> None:
        def running() -> int | None:
            for batch in _batch_ids(redis_client):
                # state and info in one read: two reads can straddle the task's end
                meta = AsyncResult(batch, app=client.app).backend.get_task_meta(batch)
                if meta["status"] == "STARTED" and isinstance(meta["result"], dict):
                    return int(meta["result"]["pid"])
            return None

        assert wait_for(lambda: running() is not None, timeout=30), "the batch never started"
        time.sleep(0.8)  # an image or two reported, the rest not yet
        found: list[int] = []  # a batch may just have ended and the next not yet started: look again
        assert wait_for(lambda: (pid := running()) is not None and not found.append(pid), timeout=30)
        pid = found[0]
        assert pid in worker.child_pids()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_batch_mid_way)
    killer.start()
    # One task of six images, 0.4 s each: of a count not known ahead (an iterator), a worker's
    # first task takes up to BATCH_RAMP (8); six known ones would go as three tasks of two.
    results = list(client.map(iter(sources), ["test_slow:seconds=0.4", "invert"], grid="auto", timeout=120))
    killer.join()
    assert killed, "the test did not kill the worker"
    assert sorted(r.index for r in results) == list(range(6))  # each image exactly once
    for result in results:
        assert result.ok, result.error
        out = Image.open(io.BytesIO(result.unwrap()))
        assert same_pixels(out, pillow(images[result.index], "invert"))
    assert wait_for(lambda: len(worker.child_pids()) == 2, timeout=30)  # the pool replaced its child


def test_a_batch_past_its_timeout_fails_each_image_alone_and_leaves_nothing(
    client: Client, redis_client: redis.Redis
) -> None:
    sources = [encoded(photo(30, 20, seed=i), "PNG") for i in range(3)]
    started = time.monotonic()
    results = list(client.map(sources, ["test_slow:seconds=30"], grid="auto", timeout=0.5))
    assert time.monotonic() - started < 30  # the client gave up, it did not wait the batch out
    assert sorted(r.index for r in results) == [0, 1, 2]
    for result in results:
        assert isinstance(result.error, tilechord.JobTimeout), result
        assert "did not finish within 0.5 s" in str(result.error)
    assert wait_for(lambda: not tilechord_keys(redis_client), timeout=30), tilechord_keys(redis_client)
    # the batches were stopped, not left to sleep 30 s on both workers: the next job is served
    image = photo(32, 24)
    assert same_pixels(
        client.process_image(image, ["invert"], grid=(1, 1), timeout=15), pillow(image, "invert")
    )


def test_a_batch_report_after_the_client_left_is_taken_back(
    client: Client, redis_client: redis.Redis
) -> None:
    keys = JobKeys(new_job_id())
    client.store.open_batch(keys, [b"one", b"two"])
    client.store.batch_report(keys, {0: b"result"}, [{"item": 0, "ok": True}])  # live: it lands
    assert redis_client.hget(keys.results, "0") == b"result"
    assert all(redis_client.ttl(key) > 0 for key in (keys.live, keys.sources, keys.results, keys.done))
    client.store.cleanup(keys)
    with pytest.raises(JobGone):
        client.store.batch_report(keys, {1: b"late"}, [{"item": 1, "ok": True}])
    assert not tilechord_keys(redis_client)
    with pytest.raises(JobGone):
        client.store.batch_sources(keys)


def test_a_batch_is_one_small_message_whatever_its_images_weigh(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    sources = [encoded(photo(200, 150, seed=i), "PNG") for i in range(20)]
    results = list(client.map(sources, ["invert"], grid="auto", batch=10))
    assert all(r.ok for r in results)
    sent = [m for m in messages() if m["task"] == "tilechord.batch"]
    assert 2 <= len(sent) <= 4  # 20 images: small first tasks, then at most 10 to a task
    sizes = [m["size"] for m in sent]
    assert max(sizes) < 8 * 1024 and max(sizes) - min(sizes) < 64, sizes  # ids and counts, no pixels
