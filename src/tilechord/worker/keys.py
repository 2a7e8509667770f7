"""Every Redis key tilechord writes, named in one place.

All of a job's keys live under ``tilechord:<job id>:``; so do a batch's (a batch of
small images is one unit in Redis, with its sources and results in two hashes).  The ``live`` key marks a job
that a client still waits for; writers check it so that a straggling task of a failed
or timed-out job cannot leave data behind (see :mod:`tilechord.worker.store`).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

__all__ = ["CHUNK_BYTES", "PREFIX", "JobKeys", "chunk_key", "new_job_id", "workers_key"]

PREFIX = "tilechord"
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def new_job_id() -> str:
    return uuid.uuid4().hex


#: The largest value tilechord stores in one Redis key; a larger one is cut into chunks.
#: Redis refuses a value over 512 MB (``proto-max-bulk-len``), and one huge value is held
#: whole in a buffer on each side of every read and write.
CHUNK_BYTES = 64 * 1024 * 1024


def chunk_key(key: str, n: int) -> str:
    """The key of chunk *n* of the value stored under *key* (see :mod:`tilechord.worker.chunks`)."""
    return f"{key}:chunk:{n}"


def workers_key(queue: str) -> str:
    """The registry of live workers on *queue*: a sorted set, hostname -> alive-until (server time).

    Outside the ``tilechord:`` job namespace on purpose: it lives as long as some worker
    does, not as long as a job, so "no ``tilechord:*`` key left" stays true of jobs.  It
    carries a TTL of its own and vanishes when every worker is gone.
    """
    return f"{PREFIX}-workers:{queue}"


@dataclass(frozen=True)
class JobKeys:
    job_id: str

    def __post_init__(self) -> None:
        if not _JOB_ID.match(self.job_id):
            raise ValueError(f"invalid job id {self.job_id!r}")

    def _key(self, *parts: object) -> str:
        return ":".join((PREFIX, self.job_id, *(str(p) for p in parts)))

    @property
    def live(self) -> str:
        return self._key("live")

    @property
    def index(self) -> str:
        """A set of every data key written for the job, so cleanup needs no SCAN."""
        return self._key("keys")

    @property
    def source(self) -> str:
        return self._key("source")

    def tile(self, index: int) -> str:
        return self._key("tile", index)

    def edited(self, index: int) -> str:
        return self._key("edited", index)

    @property
    def plan(self) -> str:
        """The job's layout (frame sizes, timing), written once by the split."""
        return self._key("plan")

    def partial(self, stage: int, index: int) -> str:
        """One tile's share of a global operation's statistic (a histogram)."""
        return self._key("partial", stage, index)

    def statistic(self, stage: int) -> str:
        """A global operation's statistic for the whole image, per frame."""
        return self._key("statistic", stage)

    @property
    def result(self) -> str:
        return self._key("result")

    @property
    def sources(self) -> str:
        """A batch of small images: a hash of their sources, by position in the batch."""
        return self._key("sources")

    @property
    def results(self) -> str:
        """A batch's encoded results, a hash by position, filled as the worker goes."""
        return self._key("results")

    @property
    def fixed(self) -> tuple[str, ...]:
        """Every key of the job whose name is known without its index set."""
        return (self.live, self.index, self.source, self.plan, self.result, self.done, self.progress,
                self.finished, self.runs, self.sent, self.sources, self.results, self.feeder)  # fmt: skip

    @property
    def done(self) -> str:
        """A list the merge (or a failing task) pushes to; the client BLPOPs it."""
        return self._key("done")

    @property
    def progress(self) -> str:
        """How many tiles are edited so far: the size of :attr:`finished`, as a plain counter."""
        return self._key("progress")

    @property
    def finished(self) -> str:
        """A set of the tiles edited so far: a tile edited twice (a re-run) counts once."""
        return self._key("finished")

    @property
    def sent(self) -> str:
        """A hash, task id -> the message as sent: what is sent again if lost (:mod:`.resend`)."""
        return self._key("sent")

    @property
    def feeder(self) -> str:
        """Set, with a short TTL, while the client sends a windowed job's pieces (:mod:`.window`)."""
        return self._key("feeder")

    @property
    def runs(self) -> str:
        """A list of ``{"task", "host"}``, one per task started: which worker ran what, re-runs too."""
        return self._key("runs")

    def task_id(self, task: str, index: int | None = None) -> str:
        """Deterministic Celery task ids, so every task of a job is found from its id."""
        return f"{self.job_id}-{task}" if index is None else f"{self.job_id}-{task}-{index}"
