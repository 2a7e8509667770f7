"""Helpers for tests that drive real processes: the command line, and waiting on them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll *predicate* until it holds or *timeout* seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def tilechord_cli(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m tilechord ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tilechord", *args],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def processes_with(marker: str) -> list[int]:
    """Pids of live processes whose environment carries *marker* (ours and our children's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker.encode() in handle.read():
                    with open(f"/proc/{entry}/stat", "rb") as stat:
                        if stat.read().split(b")")[-1].split()[0] != b"Z":
                            found.append(int(entry))
        except OSError:
            continue
    return found


def wait_until_gone(marker: str, timeout: float = 15) -> list[int]:
    """The processes still carrying *marker* after up to *timeout* seconds (none, if all is well)."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
