"""Timing two sides alternately, and the rows of the results table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Row:
    """One line of the results table."""

    case: str
    tilechord: str  # shown in the tilechord column
    pillow: str  # shown in the Pillow column
    value: str  # shown in the ratio column
    target: str
    passed: bool | None  # None: reported, no target
    tilechord_s: float | None = None
    pillow_s: float | None = None
    ratio: float | None = None
    verified: str | None = None  # how tilechord's output was checked against Pillow's
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.verified is not None and self.verified.startswith("DIFFERENT"):
            return "FAIL (output differs)"
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "MISS"


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


@dataclass
class Pair:
    """The timed runs of both sides, and the last output of each."""

    tilechord: list[float]
    pillow: list[float]
    tilechord_out: Any
    pillow_out: Any

    @property
    def tc(self) -> float:
        return statistics.median(self.tilechord)

    @property
    def pil(self) -> float:
        return statistics.median(self.pillow)


def compare(tc: Callable[[], T], pil: Callable[[], T], runs: int, warmup: int) -> Pair:
    """Warm both up, then time them alternately *runs* times each, so drift hurts both alike."""
    tc_out: Any = None
    pil_out: Any = None
    for _ in range(warmup):
        tc_out = tc()
        pil_out = pil()
    tc_times: list[float] = []
    pil_times: list[float] = []
    for _ in range(runs):
        elapsed, tc_out = timed(tc)
        tc_times.append(elapsed)
        elapsed, pil_out = timed(pil)
        pil_times.append(elapsed)
    return Pair(tc_times, pil_times, tc_out, pil_out)


def secs(value: float) -> str:
    return f"{value:.3f} s"


def runs_detail(pair: Pair) -> dict[str, Any]:
    return {
        "tilechord_runs_s": [round(t, 4) for t in pair.tilechord],
        "pillow_runs_s": [round(t, 4) for t in pair.pillow],
    }


def table(rows: list[Row]) -> str:
    head = ("case", "tilechord", "Pillow", "ratio", "target", "result")
    return grid_text(head, [(r.case, r.tilechord, r.pillow, r.value, r.target, r.verdict) for r in rows])


def grid_text(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell, a rule under the head."""
    cells = [head, *rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(text.ljust(width) for text, width in zip(c, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)
