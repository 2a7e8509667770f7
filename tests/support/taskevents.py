"""Celery's own task events, received in a thread: which host ran which task, and when.

The fault tests see who ran a tile through Celery (``task-started`` carries the worker's
``hostname``), never through anything tilechord writes, so they do not trust the code
they test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskEvent:
    kind: str  # "task-started", "task-succeeded", ...
    task_id: str
    host: str  # the worker's node name
    at: float  # time.monotonic() when we received it


class TaskEvents:
    """Every task event of every worker on *url*, kept in order of arrival."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._events: list[TaskEvent] = []
        self._seen = 0  # events of any kind (worker heartbeats too): proof we are subscribed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)

    def start(self, timeout: float = 15) -> TaskEvents:
        """Subscribe, and return once an event (a worker heartbeat, every 2 s) has arrived."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self._seen == 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Celery event arrived within {timeout:g} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)

    def _run(self) -> None:
        from celery import Celery

        app = Celery("tilechord-test-events", broker=self.url, set_as_current=False)
        app.conf.update(accept_content=["json"], event_serializer="json", broker_connection_timeout=2.0)
        while not self._stop.is_set():
            try:
                with app.connection_for_read() as conn:
                    self._receiver = app.events.Receiver(conn, handlers={"*": self._on})
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception:  # Redis away (restarted, say): subscribe again
                time.sleep(0.2)
        app.close()

    def _on(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._seen += 1
            kind = str(event.get("type", ""))
            if kind.startswith("task-") and "uuid" in event:
                host = str(event.get("hostname"))
                self._events.append(TaskEvent(kind, event["uuid"], host, time.monotonic()))

    def of(self, prefix: str, kind: str = "task-started") -> list[TaskEvent]:
        """The events of *kind* for tasks whose id starts with *prefix* (a job id: all its tasks)."""
        with self._lock:
            return [e for e in self._events if e.kind == kind and e.task_id.startswith(prefix)]

    def wait(self, prefix: str, timeout: float, kind: str = "task-started",
             where: Callable[[TaskEvent], bool] = lambda e: True) -> TaskEvent | None:  # fmt: skip
        """The first event of *kind* for *prefix* that *where* accepts, waiting up to *timeout* s."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.of(prefix, kind) if where(e)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def hosts(self, prefix: str, kind: str = "task-started") -> set[str]:
        """The hosts that ran (started) a task of *prefix*."""
        return {e.host for e in self.of(prefix, kind)}
