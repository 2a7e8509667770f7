"""The speed-up Amdahl's law allows a job, from its measured serial head, parallel body and tail.

A job of end-to-end time ``T = head + body + tail`` whose body ran on ``w0`` workers at once
would take, on ``n`` workers, at best ``head + tail + body * w0 / n``: the head (until the
first edit starts) and the tail (after the last edit ends) stay serial, the body's work is
spread over ``n`` instead of ``w0``.  So::

    S(n) = T / (head + tail + body * w0 / n)        and, as n grows,  S -> T / (head + tail)

It is a bound, not a forecast: it assumes the grid has at least ``n`` tiles, that cutting
more tiles adds no halo work, and that the head and tail do not grow; the split and the
merge are the same work whatever the number of workers.  No import of tilechord here, so
the arithmetic is tested alone (tests/unit/test_bench_amdahl.py).
"""

from __future__ import annotations

import math
from typing import Any

#: The worker counts the report gives the bound for.
WORKER_COUNTS = (4, 8, 16)


def amdahl(head: float, body: float, tail: float, w0: int, n: int) -> float:
    """``S(n)``: the end-to-end time over the time the same job would take on *n* workers."""
    if w0 < 1 or n < 1:
        raise ValueError(f"worker counts are at least 1, not w0={w0}, n={n}")
    if min(head, body, tail) < 0:
        raise ValueError(f"phases are not negative: head {head}, body {body}, tail {tail}")
    total = head + body + tail
    best = head + tail + body * w0 / n
    return total / best if best > 0 else math.inf


def amdahl_table(
    phases: dict[str, Any], w0: int, counts: tuple[int, ...] = WORKER_COUNTS
) -> dict[str, float]:
    """``S(n)`` for each of *counts*, and the limit ``T / (head + tail)`` (``"inf"`` key)."""
    head, body, tail = phases["head_ms"], phases["body_ms"], phases["tail_ms"]
    out = {str(n): round(amdahl(head, body, tail, w0, n), 2) for n in counts}
    serial = head + tail
    out["inf"] = round((head + body + tail) / serial, 2) if serial > 0 else math.inf
    return out
