"""Loaded by the test workers through TILECHORD_PLUGINS (and by the test client).

It records the size of every task message as kombu's Redis transport puts it on the
wire (json body, base64-encoded inside a json envelope), so a test can check that no
message of a job grows with the image.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import redis
from celery.signals import before_task_publish
from kombu.serialization import dumps

MESSAGES_KEY = "tilechord-test:messages"


def _wire_size(body: Any, headers: dict[str, Any], properties: dict[str, Any]) -> int:
    content_type, encoding, data = dumps(body, serializer="json")
    raw = data.encode() if isinstance(data, str) else data
    envelope = {
        "body": base64.b64encode(raw).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            **properties,
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "tilechord"},
            "delivery_tag": "00000000-0000-0000-0000-000000000000",
        },
    }
    return len(json.dumps(envelope, default=str))


@before_task_publish.connect
def _record(
    body: Any = None,
    headers: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    url = os.environ.get("TILECHORD_REDIS_URL")
    if not url or headers is None:
        return
    size = _wire_size(body, headers, properties or {})
    entry = json.dumps(
        {"task": headers.get("task"), "id": headers.get("id"), "root": headers.get("root_id"), "size": size}
    )
    client = redis.Redis.from_url(url)
    client.rpush(MESSAGES_KEY, entry)
    client.expire(MESSAGES_KEY, 3600)
    client.close()


# --------------------------------------------------------------------- test operations
import time as _time  # noqa: E402

from PIL import Image, ImageFilter  # noqa: E402

import tilechord  # noqa: E402


@tilechord.operation("test_slow", kind="pixel", bounds={"seconds": (0, 30)})
def test_slow(image: Image.Image, seconds: float = 1.0) -> Image.Image:
    """Sleep, then return the image unchanged: a tile that takes long enough to kill."""
    if image.width * image.height > 100:  # not on the client's tiny dry-run image
        _time.sleep(seconds)
    return image.copy()


@tilechord.operation("test_explode", kind="pixel")
def test_explode(image: Image.Image, below: int = 1) -> Image.Image:
    """Raise on any tile smaller than `below` pixels wide (a task that fails)."""
    if 10 <= image.width < below:  # (the client's dry-run image is 8 px wide)
        raise RuntimeError(f"boom on a {image.width}-pixel-wide tile")
    return image.copy()


@tilechord.operation("test_mode_filter", reach=lambda p: p["size"] // 2, bounds={"size": (3, 9)})
def test_mode_filter(image: Image.Image, size: int = 3) -> Image.Image:
    """A custom neighbourhood operation: Pillow's ModeFilter."""
    return image.filter(ImageFilter.ModeFilter(size))


@tilechord.operation("test_slow_light", kind="pixel", bounds={"dark": (0, 60), "light": (0, 60)})
def test_slow_light(image: Image.Image, dark: float = 1.0, light: float = 1.0) -> Image.Image:
    """Sleep *dark* seconds on a tile darker than mid-grey, *light* on a lighter one.

    Tiles of one job then take different times: a test can have one tile finish (twice,
    on two workers) while another still runs.
    """
    if image.width * image.height > 100:  # not on the client's tiny dry-run image
        mean = sum(image.convert("L").getdata()) / (image.width * image.height)
        _time.sleep(dark if mean < 128 else light)
    return image.copy()
