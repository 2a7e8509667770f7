"""The whole canvas, split -> chord(edit) -> merge, through real workers on a real Redis.

Every result is compared with Pillow called directly on the whole image.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from images import encoded, photo
from PIL import Image, ImageFilter
from procs import wait_until_gone
from reference import pillow, reference

import tilechord
from tilechord import Client
from tilechord.imaging.raw import pack_raw

SPECS = ["grayscale", "invert", "gaussian_blur:radius=6", "sharpen"]
GRIDS = [(1, 1), (2, 1), (3, 1), (2, 2), (4, 3)]


def assert_same(result: Image.Image, expected: Image.Image) -> None:
    assert result.mode == expected.mode
    assert result.size == expected.size
    assert result.tobytes() == expected.tobytes()


@pytest.fixture(scope="module")
def odd_photo() -> Image.Image:
    return photo(97, 61, seed=3)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("spec", SPECS)
def test_operation_on_any_grid_equals_pillow_on_whole_image(
    client: Client, odd_photo: Image.Image, spec: str, grid: tuple[int, int], no_leftovers: None
) -> None:
    result = client.process_image(odd_photo, [spec], grid=grid)
    assert_same(result, pillow(odd_photo, spec))


def test_blur_across_tile_border_is_seamless_where_naive_halving_is_not(client: Client) -> None:
    image = photo(120, 40, seed=5)
    expected = pillow(image, "gaussian_blur:radius=4")
    result = client.process_image(image, ["gaussian_blur:radius=4"], grid=(2, 1))
    assert_same(result, expected)
    # The naive version (each half blurred alone) differs right at the seam: the test
    # image is one where a missing halo would show.
    naive = Image.new("RGB", image.size)
    for box in ((0, 0, 60, 40), (60, 0, 120, 40)):
        naive.paste(pillow(image.crop(box), "gaussian_blur:radius=4"), box[:2])
    assert naive.tobytes() != expected.tobytes()


def test_pipeline_chains_like_pillow_and_accepts_pairs(client: Client, odd_photo: Image.Image) -> None:
    ops: list[Any] = ["grayscale", ("gaussian_blur", {"radius": 4}), "sharpen", ("invert", {})]
    result = client.process_image(odd_photo, ops, grid=(3, 2))
    assert_same(result, reference(odd_photo, ops))


def test_png_path_in_gives_png_bytes_out(client: Client, odd_photo: Image.Image, tmp_path: Path) -> None:
    path = tmp_path / "in.png"
    path.write_bytes(encoded(odd_photo, "PNG"))
    before = path.read_bytes()
    data = client.process(path, ["gaussian_blur:radius=2"], grid=(2, 2))
    out = Image.open(io.BytesIO(data))
    assert out.format == "PNG"
    assert_same(out, pillow(odd_photo, "gaussian_blur:radius=2"))
    assert path.read_bytes() == before  # the input is never changed


def test_jpeg_stays_jpeg_unless_another_format_is_asked(client: Client, odd_photo: Image.Image) -> None:
    source = encoded(odd_photo, "JPEG", quality=90)
    decoded = Image.open(io.BytesIO(source))
    as_jpeg = Image.open(io.BytesIO(client.process(source, ["invert"])))
    assert as_jpeg.format == "JPEG"
    as_png = Image.open(io.BytesIO(client.process(io.BytesIO(source), ["invert"], format="PNG")))
    assert as_png.format == "PNG"
    assert_same(as_png, pillow(decoded, "invert"))


@pytest.mark.parametrize("grid", [(1, 1), (2, 1), (4, 3)], ids=str)
def test_no_operations_is_the_identity(client: Client, grid: tuple[int, int]) -> None:
    image = photo(33, 17, mode="RGBA", seed=9)
    data = client.process(encoded(image, "PNG"), [], grid=grid)
    assert_same(Image.open(io.BytesIO(data)), image)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (3, 7), (2, 2)], ids=str)
def test_grid_larger_than_image_clips_to_one_pixel_per_tile(client: Client, size: tuple[int, int]) -> None:
    image = photo(*size, seed=1)
    ops = ["gaussian_blur:radius=3", "sharpen"]
    result = client.process_image(image, ops, grid=(5, 5))
    assert_same(result, reference(image, ops))


def test_submit_returns_a_job_that_reports_status_and_progress(client: Client, no_leftovers: None) -> None:
    image = photo(200, 150, seed=2)
    job = client.submit(encoded(image, "PNG"), ["gaussian_blur:radius=3"], grid=(3, 2))
    assert isinstance(job.id, str) and job.id
    assert job.status in {"PENDING", "STARTED", "SUCCESS"}
    data = job.get(timeout=60)
    assert job.status == "SUCCESS"
    assert job.progress() == (6, 6)
    assert_same(Image.open(io.BytesIO(data)), pillow(image, "gaussian_blur:radius=3"))
    assert job.get() == data  # a second get returns the same bytes


def test_bad_input_is_rejected_before_anything_is_enqueued(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    with pytest.raises(tilechord.UnknownOperation, match="gaussian_blur"):
        client.process(encoded(photo(8, 8), "PNG"), ["gausian_blur"])
    with pytest.raises(tilechord.InvalidParameter, match="radius"):
        client.process(encoded(photo(8, 8), "PNG"), ["gaussian_blur:radius=lots"])
    with pytest.raises(tilechord.InvalidImage):
        client.process(b"definitely not an image", ["invert"])
    with pytest.raises(tilechord.InvalidGrid):
        client.process(encoded(photo(8, 8), "PNG"), ["invert"], grid="2by2")
    assert messages() == []  # not one task message was published


def test_job_messages_of_a_24_megapixel_image_stay_under_8_kb(
    client: Client, messages: Callable[[], list[dict[str, Any]]], no_leftovers: None
) -> None:
    image = Image.new("RGB", (6000, 4000), (10, 120, 200))
    job = client.submit(pack_raw(image), ["invert"], grid=(2, 1))
    job.get(timeout=120)
    deadline = time.monotonic() + 10
    seen: dict[str, int] = {}
    while time.monotonic() < deadline:
        seen = {m["task"]: max(seen.get(m["task"], 0), m["size"]) for m in messages() if m["root"] == job.id}
        if {"tilechord.split", "tilechord.edit", "tilechord.merge"} <= set(seen):
            break
        time.sleep(0.1)
    assert {"tilechord.split", "tilechord.edit", "tilechord.merge"} <= set(seen), seen
    assert max(seen.values()) < 8 * 1024, seen


def test_twenty_jobs_leave_no_tilechord_keys_and_celery_results_expire(
    client: Client, redis_client: redis.Redis, messages: Callable[[], list[dict[str, Any]]]
) -> None:
    image = photo(64, 48, seed=4)
    source = encoded(image, "PNG")
    jobs = [client.submit(source, ["sharpen"], grid=(2, 2)) for _ in range(20)]
    expected = pillow(image, "sharpen").tobytes()
    for job in jobs:
        assert Image.open(io.BytesIO(job.get(timeout=60))).tobytes() == expected
    assert list(redis_client.scan_iter(match="tilechord:*")) == []
    # Only these jobs' own records count (earlier tests leave theirs, expiring): a merge and
    # four edits per job, each with its Celery result, and everything of Celery's that names
    # the job (results, chord state) with a TTL.
    ours = {job.id for job in jobs}
    sent = [m for m in messages() if m["root"] in ours and m["task"] in ("tilechord.edit", "tilechord.merge")]
    assert len(sent) == 20 * 5, sent
    for message in sent:
        key = f"celery-task-meta-{message['id']}"
        assert redis_client.exists(key), key
        assert redis_client.ttl(key) > 0, key
    for job in jobs:
        celery_keys = [
            k for k in redis_client.scan_iter(match=f"*{job.id}*") if not k.startswith(b"tilechord")
        ]
        assert celery_keys, job.id
        for key in celery_keys:
            assert redis_client.ttl(key) > 0, key


def test_custom_plugin_operation_runs_on_real_workers_seam_free_on_a_3x3_grid(client: Client) -> None:
    image = photo(95, 71, mode="L", seed=12)
    result = client.process_image(image, ["test_mode_filter:size=5"], grid=(3, 3))
    assert_same(result, image.filter(ImageFilter.ModeFilter(5)))  # the plugin's own Pillow call


def test_python_api_without_redis_starts_one_local_cluster_and_stops_it_at_exit(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import uuid

    marker = uuid.uuid4().hex
    script = tmp_path / "use_api.py"
    script.write_text(
        "import os, sys, io, tilechord\n"
        "from PIL import Image, ImageFilter\n"
        "src = sys.argv[1]\n"
        "from tilechord.local import shared_cluster\n"
        "a = tilechord.process(src, ['gaussian_blur:radius=3'], format='PNG')\n"
        "first = shared_cluster()\n"
        "b = tilechord.process(src, ['invert'], grid=(2, 2), format='PNG')\n"
        "assert shared_cluster() is first and first.running\n"
        "ref = Image.open(src).filter(ImageFilter.GaussianBlur(3))\n"
        "assert Image.open(io.BytesIO(a)).tobytes() == ref.tobytes()\n"
        "print('one cluster')\n"
    )
    src = tmp_path / "in.png"
    photo(80, 50).save(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TILECHORD_")}
    env["TILECHORD_TEST_MARKER"] = marker
    env["TILECHORD_WORKERS"] = "2"
    done = subprocess.run(
        [sys.executable, str(script), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "one cluster"
    assert wait_until_gone(marker) == []  # stopped at exit
