"""Every error tilechord raises, in one hierarchy.

Catch :class:`TilechordError` for all of them.  Errors about the input derive from
:class:`ValueError` too, so code written against Pillow keeps working.  Each class
takes a single message argument so that it survives a trip through Celery's json
result backend unchanged.
"""

from __future__ import annotations

__all__ = [
    "TilechordError",
    "ConfigurationError",
    "ClusterError",
    "RedisUnreachable",
    "BrokerUnavailable",
    "InvalidImage",
    "ImageTooLarge",
    "UnsupportedFormat",
    "UnknownOperation",
    "InvalidParameter",
    "UnsupportedMode",
    "InvalidGrid",
    "JobFailed",
    "JobTimeout",
    "JobCancelled",
    "NoWorker",
    "JobGone",
    "InvalidOutput",
    "error_from_name",
]


class TilechordError(Exception):
    """Base class of every error tilechord raises on purpose."""


class ConfigurationError(TilechordError):
    """A ``TILECHORD_*`` setting is missing, malformed or out of range."""


class ClusterError(TilechordError, RuntimeError):
    """The local cluster (embedded Redis, worker pool) could not be started; see its log tail."""


class BrokerUnavailable(TilechordError, ConnectionError):
    """Redis could not be reached, or went away while a job was running."""


class RedisUnreachable(BrokerUnavailable):
    """Redis did not answer (refused, reset or timed out) through every retry: an outage.

    Unlike a refused password or command, it may pass: a task that meets it hands its
    message back instead of failing the job (another worker, or this one later, runs it).
    """


class InvalidImage(TilechordError, ValueError):
    """The input is not an image Pillow can decode completely."""


class ImageTooLarge(InvalidImage):
    """The input exceeds a configured limit (pixels, bytes or tile size)."""


class UnsupportedFormat(TilechordError, ValueError):
    """The requested output format is unknown, or cannot hold the result's mode."""


class UnknownOperation(TilechordError, ValueError):
    """No operation of that name is registered."""


class InvalidParameter(TilechordError, ValueError):
    """An operation was given a parameter it does not take, or a bad value."""


class UnsupportedMode(TilechordError, ValueError):
    """An operation cannot work on images of the input's mode."""


class InvalidGrid(TilechordError, ValueError):
    """The requested tile grid is malformed or exceeds the tile limit."""


class JobFailed(TilechordError, RuntimeError):
    """A task of the job failed; the message names the task, the tile and the cause."""


class JobTimeout(TilechordError, TimeoutError):
    """The job did not finish within its timeout; its data has been cleaned up."""


class NoWorker(JobTimeout):
    """No live worker serves the job's queue, so the job cannot start.

    A :class:`JobTimeout`: it ends the wait early, seconds in, instead of at the timeout.
    """


class JobCancelled(TilechordError):
    """The job was cancelled (:meth:`Job.cancel`, a closed :func:`map`, Ctrl-C): its tasks were
    stopped and its data deleted."""


class JobGone(JobFailed):
    """The job's data is gone: it was cleaned up (failed, timed out) or expired.

    Tasks raise it to stop a job nobody waits for; the client sees it when Redis lost
    the job's keys (a restart, a flush, or a job that outlived its TTL).
    """


class InvalidOutput(TilechordError, ValueError):
    """The output path cannot be written: a missing directory, a file where a directory must be."""


_BY_NAME: dict[str, type[TilechordError]] = {
    cls.__name__: cls
    for cls in (
        TilechordError,
        ConfigurationError,
        ClusterError,
        BrokerUnavailable,
        RedisUnreachable,
        InvalidImage,
        ImageTooLarge,
        UnsupportedFormat,
        UnknownOperation,
        InvalidParameter,
        UnsupportedMode,
        InvalidGrid,
        JobFailed,
        JobTimeout,
        JobCancelled,
        NoWorker,
        JobGone,
        InvalidOutput,
    )
}


def error_from_name(name: str, message: str) -> TilechordError:
    """Rebuild an error reported by a worker; unknown names become :class:`JobFailed`."""
    return _BY_NAME.get(name, JobFailed)(message)
