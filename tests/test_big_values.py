"""Values over 64 MB travel as chunks: a job whose source, tiles and result are each larger.

Redis refuses a value over 512 MB, and one huge value is held whole in a buffer on each side
of every read and write; :mod:`tilechord.worker.chunks` cuts anything over ``CHUNK_BYTES``.
A thread watches every ``tilechord:*`` string while the jobs run.
"""

from __future__ import annotations

import io
import threading

import pytest
import redis
from images import random_image
from PIL import Image
from reference import pillow

from tilechord import Client
from tilechord.worker.keys import CHUNK_BYTES


@pytest.mark.slow
def test_a_job_over_64_mb_per_value_equals_pillow_and_no_value_is_over_64_mb(
    client: Client, redis_client: redis.Redis, no_leftovers: None
) -> None:
    image = random_image("RGB", 5200, 4400, seed=3)  # 68.6 MB raw: over one chunk
    assert image.width * image.height * 3 > CHUNK_BYTES
    largest = [0]
    stop = threading.Event()

    def watch() -> None:
        r = redis.Redis(connection_pool=redis_client.connection_pool)
        while not stop.is_set():
            for key in r.scan_iter(match="tilechord:*", _type="string", count=1000):
                largest[0] = max(largest[0], int(r.strlen(key)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        whole = client.process_image(image, ["gaussian_blur:radius=2"], grid=(1, 1))
        halves = client.process_image(image, ["invert"], grid=(1, 2))
        tiff = io.BytesIO()
        image.save(tiff, "TIFF")
        encoded = client.process(tiff.getvalue(), ["invert"], grid=(2, 1), format="TIFF")
    finally:
        stop.set()
        watcher.join()
    assert whole.tobytes() == pillow(image, "gaussian_blur:radius=2").tobytes()
    assert halves.tobytes() == pillow(image, "invert").tobytes()
    assert Image.open(io.BytesIO(encoded)).tobytes() == pillow(image, "invert").tobytes()
    assert CHUNK_BYTES // 2 < largest[0] <= CHUNK_BYTES, largest[0]  # chunks were seen, none larger
