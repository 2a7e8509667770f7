"""Messages lost in delivery: found by the waiting client and sent again.

An idle worker waits in a BRPOP on the queue.  If its machine freezes or drops off the
network in the second before a message arrives, Redis hands the message to that BRPOP all
the same: it leaves the queue, but the worker never reads it, so kombu never records it
as delivered and no lease (:mod:`tilechord.worker.lease`) covers it.  Nothing in Redis
would ever run it again, and its job would wait out its timeout.

So every task message of a job is recorded as it is sent (:class:`RecordingAMQP`: the
exact message Celery built, chord links included, under ``tilechord:<job>:sent``), and the
client that waits for the job looks, every few seconds, for messages sent long enough ago
that nobody has started (no Celery record), which are neither in the queue nor in kombu's
unacked hash.  Seen missing twice in a row (a message between the BRPOP and kombu's record
of it is missing for an instant), such a message is sent again, as it was.  A task that
then runs twice is harmless, as every re-run is (:mod:`tilechord.worker.lease`).
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from celery.app.amqp import AMQP, task_message

from ..config import QUEUE
from .keys import JobKeys
from .specs import EDIT, MERGE, REDUCE, SPLIT, STATS

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = ["GRACE", "RecordingAMQP", "Sweeper"]

logger = logging.getLogger("tilechord")

#: The tasks whose messages are recorded: those of a job (a batch is redelivered as a whole).
RECORDED = frozenset({SPLIT, STATS, REDUCE, EDIT, MERGE})
#: Seconds a message may go unstarted before the client looks for it.
GRACE = 3.0
#: A queue longer than this is not searched: its messages wait for busy workers, and a
#: lost one is found once the queue is shorter.
SEARCHED = 2000
#: kombu's hash of delivered, unacknowledged messages (its default ``unacked_key``).
UNACKED = "unacked"

# KEYS[1] the job's live mark, KEYS[2] its sent hash; ARGV[1] the task id, ARGV[2] the
# message, ARGV[3] the TTL.  Stamped with Redis's clock, which every machine shares.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local now = redis.call('TIME')[1]
redis.call('HSET', KEYS[2], ARGV[1], now .. ' ' .. ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""
# KEYS[1] the sent hash: every record, and Redis's clock.
_READ = """
return {redis.call('TIME')[1], redis.call('HGETALL', KEYS[1])}
"""


def _job_of(task_id: str) -> JobKeys | None:
    try:
        return JobKeys(task_id[:32])
    except ValueError:
        return None


class RecordingAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper, recording each job task's message once it is sent."""

    @cached_property
    def send_task_message(self) -> Any:
        send = self._create_task_sender()
        app = self.app

        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            result = send(producer, name, message, **options)
            if name in RECORDED:
                _record(app, message)
            return result

        return send_task_message


def _record(app: TilechordCelery, message: Any) -> None:
    headers, properties, body, _ = message
    task_id = str(headers.get("id", ""))
    keys = _job_of(task_id)
    if keys is None:
        return
    payload = json.dumps([headers, properties, body])
    try:
        app.store.client.eval(_RECORD, 2, keys.live, keys.sent, task_id, payload, app.store.ttl)
    except Exception as exc:  # the message is sent; only its recovery is lost
        logger.debug("cannot record the message of %s: %s", task_id, exc)


class Sweeper:
    """One job's look for its lost messages (see the module's docstring); the client calls it."""

    def __init__(self, app: TilechordCelery, keys: JobKeys) -> None:
        self.app, self.keys = app, keys
        self.missing: set[str] = set()  # missing at the last look
        self.sent_again: list[str] = []

    def sweep(self) -> list[str]:
        """Send again the messages found lost at this look and the last; their task ids."""
        client = self.app.store.client
        now, flat = client.eval(_READ, 1, self.keys.sent)
        records = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        old = {tid: rec for tid, rec in records.items() if int(now) - int(rec.split(b" ", 1)[0]) >= GRACE}
        unstarted = self._unstarted(list(old))
        missing = self._absent(unstarted) if unstarted else set()
        lost, self.missing = missing & self.missing, missing
        for task_id in sorted(lost):
            self._send(old[task_id].split(b" ", 1)[1])
            self.missing.discard(task_id)
        self.sent_again += sorted(lost)
        return sorted(lost)

    def _unstarted(self, task_ids: list[str]) -> list[str]:
        """Those not running nor ended: no Celery record, or RETRY (its next message is out).

        A task records STARTED as it starts.  A merge waiting for tiles records RETRY and
        sends its message again, which can be lost like any other.
        """
        if not task_ids:
            return []
        backend = self.app.backend
        metas = backend.client.mget([backend.get_key_for_task(tid) for tid in task_ids])
        return [tid for tid, meta in zip(task_ids, metas, strict=True) if meta is None or b'"RETRY"' in meta]

    def _absent(self, task_ids: list[str]) -> set[str]:
        """Those neither waiting in the queue nor held (delivered, unacknowledged) by a worker."""
        client = self.app.store.client
        if int(client.llen(QUEUE)) > SEARCHED:
            return set()
        held = b"".join(cast("list[bytes]", [*client.lrange(QUEUE, 0, -1), *client.hvals(UNACKED)]))
        return {tid for tid in task_ids if f'"{tid}"'.encode() not in held}

    def _send(self, payload: bytes) -> None:
        headers, properties, body = json.loads(payload)
        name = headers["task"]
        logger.warning(
            "job %s: message of %s lost in delivery; sending it again", self.keys.job_id, headers["id"]
        )
        with self.app.producer_or_acquire() as producer:
            self.app.amqp.send_task_message(producer, name, task_message(headers, properties, body, None))
