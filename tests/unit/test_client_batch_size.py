"""The batch scheduler's sizing: pure arithmetic, so it is tested here without Redis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tilechord.client.batch import BATCH_RAMP, batch_size


def test_first_tasks_are_small_so_every_worker_starts_at_once() -> None:
    # 200 images on 2 workers: the first task of each worker takes the ramp, not 50.
    assert batch_size(200, workers=2, launched=0, batch=64) == BATCH_RAMP
    assert batch_size(200, workers=2, launched=1, batch=64) == BATCH_RAMP


def test_the_rest_is_cut_into_two_tasks_per_worker() -> None:
    # After 2 x 8 images, 184 remain: two tasks per worker is 46 each.
    assert batch_size(200, workers=2, launched=2, batch=64) == 46


def test_a_few_images_are_spread_over_the_workers() -> None:
    # 6 images on 2 workers: 2 each, in three tasks (never more than there is work for).
    assert batch_size(6, workers=2, launched=0, batch=64) == 2
    assert batch_size(6, workers=2, launched=2, batch=64) == 2


def test_an_unsized_stream_ramps_up_then_fills_whole_batches() -> None:
    assert batch_size(None, workers=4, launched=3, batch=64) == BATCH_RAMP
    assert batch_size(None, workers=4, launched=4, batch=64) == 64
    assert batch_size(None, workers=4, launched=0, batch=3) == 3


@given(
    total=st.one_of(st.none(), st.integers(1, 100_000)),
    workers=st.integers(1, 64),
    launched=st.integers(0, 1000),
    batch=st.integers(1, 256),
)
def test_a_batch_is_never_empty_nor_over_its_limit(
    total: int | None, workers: int, launched: int, batch: int
) -> None:
    assert 1 <= batch_size(total, workers, launched, batch) <= batch
