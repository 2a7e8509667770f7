"""Leases: a message stays with its worker only while that worker is alive to renew it.

Why kombu's own mechanism, renewed, and not tilechord's lease keys: with late
acknowledgement, kombu's Redis transport keeps every delivered message in its ``unacked``
hash, indexed by delivery time in ``unacked_index``, until the worker acknowledges it; a
periodic sweep in every worker (``restore_visible``) puts back on the queue each message
older than the visibility timeout.  That sweep already re-sends *any* task (split, tile,
reduce, merge, batch) with the exact message Celery made, chord links included, which a
re-send of our own would have to rebuild.  Its one flaw is the fixed timeout: short, it
re-runs long tiles on healthy workers; long, a dead worker's tile waits for it.  So the
timeout is short (:attr:`Settings.lease`) and each worker renews it: a timer in the
worker's event loop (the main process, not the pool, which may be deep in a Pillow call)
re-stamps every message the worker holds, every lease/5 seconds.  A worker that dies,
freezes or is cut off stops stamping, and its messages go back on the queue about
``lease`` seconds later, taken by the next sweep of any live worker (every second).

The stamp rewrites the message's entry as kombu's own ``QoS.append`` writes it, payload
included, not only its time: when a frozen worker wakes and acknowledges a message that was
meanwhile re-delivered to another (same delivery tag), its acknowledgement deletes the
entry, and the new holder's next stamp writes it back.  Stamps and acknowledgements of one
worker run on the same event-loop thread, so a stamp never revives a message acknowledged
before it.  A task may therefore run twice (the frozen one wakes and finishes); every write
is idempotent and the merge and reduce wait for tiles still missing, so a repeat is harmless.

The machines' clocks matter: the sweep compares a stamp with its own clock.  Keep worker
clocks within a second or two of each other (NTP), as kombu itself assumes.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, ClassVar

from celery import bootsteps
from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.utils.json import dumps

__all__ = ["RECONNECT_EVERY", "Consumer", "LeaseRenewal", "renew_every"]

logger = logging.getLogger("tilechord")

#: Seconds between attempts to reconnect to a lost Redis (Celery's default backs off to
#: 30 s, so a worker would sit idle up to half a minute after Redis came back).
RECONNECT_EVERY = 0.5


def renew_every(lease: float) -> float:
    """Seconds between renewals: five renewals fit in one lease, so one lost write is harmless."""
    return max(0.2, lease / 5)


def _held() -> list[Any]:
    """Every request this worker holds a message for and has not acknowledged yet."""
    held = set(state.reserved_requests) | set(state.active_requests) | set(state.scheduled_requests)
    return [req for req in held if not req.acknowledged and req.message is not None]


def _stamp(message: Any) -> None:
    """Re-stamp one message's kombu entry with the current time, payload and all."""
    qos = message.channel.qos
    tag = message.delivery_tag
    delivery = message.delivery_info
    entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]
    with qos.pipe_or_acquire() as pipe:
        pipe.zadd(qos.unacked_index_key, {tag: time.time()}).hset(qos.unacked_key, tag, entry).execute()


class LeaseRenewal(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer bootstep: renew the lease of every held message on the event loop's timer."""

    requires: ClassVar[set[str]] = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._entry: Any = None
        self._timer: Any = None

    def start(self, consumer: Any) -> None:
        every = renew_every(consumer.app.tilechord_settings.lease)
        self._timer = consumer.timer
        self._entry = consumer.timer.call_repeatedly(every, self.renew)

    def renew(self) -> None:
        for request in _held():
            try:
                _stamp(request.message)
            except Exception as exc:  # Redis unreachable: the next tick retries; the lease may lapse
                logger.debug("lease: cannot renew %s: %s", request.id, exc)

    def stop(self, consumer: Any) -> None:
        if self._entry is not None:
            self._timer.cancel(self._entry)  # through the timer, as Celery cancels its own entries
            self._entry = None

    shutdown = stop


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, reconnecting to a lost Redis every :data:`RECONNECT_EVERY` seconds.

    Celery passes no intervals to kombu's ``ensure_connection``, whose defaults wait 2, 4,
    6 ... up to 30 s between attempts.  Reconnecting is one TCP connect and a PING, so
    trying twice a second costs nothing and serves again as soon as Redis is back.
    """

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Stop the running tasks with SIGKILL before Celery stops them with SIGTERM.

        Celery cancels late-acknowledged tasks when the broker connection drops (their
        messages come back to some worker).  Its SIGTERM is handled in the pool process's
        Python code, which runs only once the task's Pillow call (or sleep) returns, and its
        cancel then fails on the Redis it cannot reach: the process stays busy with a tile
        nobody waits for, and the worker takes no new task for seconds after Redis is back.
        """
        for request in tuple(state.active_requests):
            if request.task.acks_late and not request.acknowledged and request.time_start:
                try:
                    request.cancel(self.pool, signal="SIGKILL", emit_retry=False)
                except Exception as error:  # the process may be gone already
                    logger.debug("lease: cannot stop %s: %s", request.id, error)
        super().on_connection_error_after_connected(exc)

    def ensure_connected(self, conn: Any) -> Any:
        original = conn.ensure_connection
        conn.ensure_connection = functools.partial(
            original, interval_start=0, interval_step=RECONNECT_EVERY, interval_max=RECONNECT_EVERY
        )
        try:
            return super().ensure_connected(conn)
        finally:
            conn.ensure_connection = original
