"""The wire size of the task messages this process publishes (the split, client side)."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from celery.signals import before_task_publish
from kombu.serialization import dumps

from .measure import Row

#: Largest task message allowed (bytes on the wire, as kombu's Redis transport stores it).
MESSAGE_LIMIT = 8 * 1024


def wire_size(body: Any, headers: dict[str, Any], properties: dict[str, Any]) -> int:
    """A task message's size as kombu's Redis transport stores it (json, base64 body)."""
    content_type, encoding, payload = dumps(body, serializer="json")  # type: ignore[no-untyped-call]
    raw = payload.encode() if isinstance(payload, str) else payload
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


class MessageSizes:
    """Records the wire size of every task message this process publishes (the split)."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        before_task_publish.connect(self._record, weak=False)

    def _record(
        self,
        body: Any = None,
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        if headers is None:
            return
        task = str(headers.get("task"))
        size = wire_size(body, headers, properties or {})
        with self._lock:
            self.sizes[task] = max(self.sizes.get(task, 0), size)

    def rows(self) -> list[Row]:
        split = self.sizes.get("tilechord.split")
        return [
            Row(
                case="largest task message: split (every job of this run, client side)",
                tilechord="-" if split is None else f"{split:,} B",
                pillow="-",
                value="-" if split is None else f"{split:,} B",
                target=f"< {MESSAGE_LIMIT:,} B",
                passed=None if split is None else split < MESSAGE_LIMIT,
                details={"client_side_max_bytes": dict(self.sizes)},
            ),
            Row(
                case="largest task message: edit, merge (published by the workers)",
                tilechord="checked by tests/test_workflow.py",
                pillow="-",
                value="-",
                target=f"< {MESSAGE_LIMIT:,} B",
                passed=None,
            ),
        ]
