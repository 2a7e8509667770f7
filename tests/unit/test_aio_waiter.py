"""How the asyncio client's waiter reads Celery's records of a job's split and merge (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from tilechord.client.aio_wait import Waiter, Watch
from tilechord.worker.keys import JobKeys

CASES = [
    # split, merge -> state noted, failed record
    ("PENDING", "PENDING", "PENDING", None),
    ("STARTED", "PENDING", "STARTED", None),
    ("FAILURE", "PENDING", "FAILURE", "split"),
    ("SUCCESS", "PENDING", "STARTED", None),  # the tiles are being edited
    ("SUCCESS", "STARTED", "STARTED", None),
    ("SUCCESS", "SUCCESS", "SUCCESS", None),
    ("SUCCESS", "FAILURE", "FAILURE", "merge"),
]


@pytest.mark.parametrize(("split", "merge", "state", "failed"), CASES)
def test_look_notes_the_state_and_finds_the_failed_task(
    split: str, merge: str, state: str, failed: str | None
) -> None:
    watch = Watch(JobKeys("abc"), 0.0, None)  # type: ignore[arg-type]
    records: dict[str, dict[str, Any]] = {"split": {"status": split}, "merge": {"status": merge}}
    found = Waiter._look(watch, records["split"], records["merge"])
    assert watch.state == state
    assert found is (None if failed is None else records[failed])


def test_the_wake_up_list_is_a_tilechord_key_of_its_own() -> None:
    waiter = Waiter(None, None, None, None, None)  # type: ignore[arg-type]
    other = Waiter(None, None, None, None, None)  # type: ignore[arg-type]
    assert waiter.wake_key.startswith("tilechord:aio-") and waiter.wake_key.endswith(":done")
    assert waiter.wake_key != other.wake_key
