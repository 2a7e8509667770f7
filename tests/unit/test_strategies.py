"""The property test's strategy and references, checked without workers.

``tests/test_property.py`` sends drawn pipelines through the real workers; these make
sure what it draws covers every operation, and mostly runs while some is refused.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from reference import PILLOW, reference_or_none
from strategies import Case, cases, drawn_operations, probe


def test_every_drawn_operation_has_a_pillow_reference() -> None:
    missing = {op.name for op in drawn_operations()} - set(PILLOW)
    assert not missing, f"add their ops-reference.md calls to tests/support/reference.py: {sorted(missing)}"
    assert len(drawn_operations()) >= 26  # the built-ins of README's table, at least


def test_the_strategy_draws_pipelines_that_run_and_some_that_are_refused() -> None:
    seen: dict[bool, int] = {True: 0, False: 0}

    @settings(
        max_examples=150,
        database=None,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases())
    def count(case: Case) -> None:
        seen[reference_or_none(probe(case.mode), case.steps) is not None] += 1

    count()
    assert seen[True] > seen[False] > 0, seen
