"""A batch: several small images in one task, since a Celery round trip costs more than one.

Each image ends on its own, with its result or its own error: one bad file fails only
itself.  Results go back a few at a time (every :data:`BATCH_REPORT_S`), so the client
sees progress and can start writing files while the rest run.  A re-delivered batch
redoes its images; the client counts each image once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import TilechordError
from ..imaging.decode import Timing, decode
from ..imaging.encode import encode_frames
from ..ops import Pipeline
from .keys import JobKeys
from .report import failure, logger

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = ["BATCH_REPORT_S", "run_batch"]

#: How often a batch sends the results it has so far (seconds of work).
BATCH_REPORT_S = 0.1


def run_batch(
    app: TilechordCelery, keys: JobKeys, ops: list[Any], format: str | None, what: str
) -> tuple[int, int]:
    """Edit every image of a batch, reporting as it goes; ``(images, failed)``."""
    store = app.store
    sources = store.batch_sources(keys)
    total = len(sources)
    try:
        pipeline = Pipeline.from_json(ops)
    except TilechordError as exc:  # a worker without the plugin: every image fails alike
        store.batch_report(keys, {}, [_item_error(i, exc, what) for i in sorted(sources)])
        raise
    results: dict[int, bytes] = {}
    ended: list[dict[str, Any]] = []
    failed = 0
    reported = time.perf_counter()
    for item in sorted(sources):
        try:
            image = decode(sources.pop(item), app.tilechord_settings.max_pixels)
            original = image if image.format else None
            results[item] = encode_frames([pipeline.apply(image)], format, original, Timing())
            ended.append({"item": item, "ok": True})
        except Exception as exc:  # that image's own failure, reported to the client
            failed += 1
            ended.append(_item_error(item, exc, what))
        if not sources or time.perf_counter() - reported >= BATCH_REPORT_S:
            store.batch_report(keys, results, ended)
            results, ended, reported = {}, [], time.perf_counter()
    return total, failed


def _item_error(item: int, exc: BaseException, what: str) -> dict[str, Any]:
    """One image's failure in a batch, as the client turns it back into a typed error."""
    name, message = failure(exc, f"image {item + 1} of {what}")
    logger.warning("%s: image %d failed: %s", what, item + 1, message)
    return {"item": item, "ok": False, "error": name, "message": message}
