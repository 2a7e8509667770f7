"""How a task reports: a log line with its time, and on failure a typed error to the client.

The client turns ``{"error": name, "message": text}`` back into the same
:class:`~tilechord.errors.TilechordError` subclass (:func:`~tilechord.errors.error_from_name`),
so a bad tile raises at the caller what a bad header would have.

Two endings are not the job's failure.  A job that is gone (cancelled, timed out, lost
with a Redis restart) ends its task with Celery's ``Ignore``: nobody waits, and a chord
must not count a tile of a dead job.  Redis unreachable through every retry ends it with
``Reject(requeue=True)``: the message goes back to the queue (or, Redis still away, stays
in kombu's unacked hash until its lease lapses), and a worker runs it once Redis answers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import redis
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.log import get_task_logger
from kombu.exceptions import OperationalError

from ..errors import JobGone, RedisUnreachable, TilechordError
from .keys import JobKeys

if TYPE_CHECKING:
    from .app import TilechordCelery

__all__ = ["failure", "logger", "reported"]

logger = get_task_logger("tilechord")

#: Errors of a connection to Redis that may pass (a link just back, a Redis restarting): a
#: task meeting one hands its message back rather than failing its job.  A refused password
#: or command is not among them (``BrokerUnavailable`` other than ``RedisUnreachable``).
TRANSIENT = (RedisUnreachable, redis.ConnectionError, redis.TimeoutError, OperationalError,
             BrokenPipeError, ConnectionResetError)  # fmt: skip


def failure(exc: BaseException, where: str) -> tuple[str, str]:
    """The error name and message a client gets: ours as they are, anything else as JobFailed."""
    if isinstance(exc, TilechordError):
        return type(exc).__name__, str(exc)
    return "JobFailed", f"{where} failed: {type(exc).__name__}: {exc}"


@contextmanager
def reported(app: TilechordCelery, keys: JobKeys, what: str) -> Iterator[None]:
    """Log the task's time; on failure tell the waiting client at once, by error type.

    The first error wins the client's attention, so a job fails as fast as its first
    failing tile, without waiting for the chord to gather the others.
    """
    started = time.perf_counter()
    try:
        yield
    except (Ignore, Reject, Retry):
        raise
    except JobGone:
        logger.info("job %s: %s skipped, the job was cancelled or expired", keys.job_id, what)
        raise Ignore() from None
    except TRANSIENT as exc:  # ours after redis-py's retries, or Celery's own (sending the next stage)
        if isinstance(exc, redis.AuthenticationError):  # a ConnectionError to redis-py; not passing
            _report_failure(app, keys, what, exc)
            raise
        logger.warning("job %s: %s handed back, to run again once Redis answers: %s", keys.job_id, what, exc)
        raise Reject(str(exc), requeue=True) from None
    except Exception as exc:
        _report_failure(app, keys, what, exc)
        raise
    else:
        logger.info("job %s: %s done in %.3f s", keys.job_id, what, time.perf_counter() - started)


def _report_failure(app: TilechordCelery, keys: JobKeys, what: str, exc: BaseException) -> None:
    """Log the failure and tell the waiting client at once, by error type."""
    name, message = failure(exc, f"{what} of job {keys.job_id}")
    logger.warning("job %s: %s failed: %s", keys.job_id, what, message)
    with contextlib.suppress(TilechordError):  # Redis gone too: the client's timeout reports it
        app.store.notify(keys, {"ok": False, "error": name, "message": message})
