"""What a job's errors say about tiles that ran more than once (pure: no Redis)."""

from __future__ import annotations

from tilechord.client.job import rerun_notes


def test_a_tile_lost_with_one_worker_and_run_on_another_is_named_with_both() -> None:
    runs = [("edit-0", "w1@a"), ("edit-1", "w2@b"), ("edit-1", "w3@c")]
    assert rerun_notes(runs, 2) == "; tile 2/2 (edit-1) lost with w2@b, run again on w3@c"


def test_tiles_that_ran_once_are_not_mentioned() -> None:
    assert rerun_notes([("edit-0", "w1@a"), ("stats0-1", "w1@a")], 2) == ""


def test_a_tile_run_three_times_names_every_worker_in_order() -> None:
    runs = [("stats0-3", "x@1"), ("stats0-3", "y@2"), ("stats0-3", "z@3")]
    assert rerun_notes(runs, 8) == "; tile 4/8 (stats0-3) lost with x@1, run again on y@2, then on z@3"
