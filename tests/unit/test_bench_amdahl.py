"""The Amdahl arithmetic the benchmark prints (scripts/benchlib/amdahl.py), checked by hand values."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest


def _load() -> ModuleType:
    """scripts/ is no package on the test path: load the module from its file (it imports no tilechord)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "benchlib" / "amdahl.py"
    spec = importlib.util.spec_from_file_location("bench_amdahl", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


amdahl_mod = _load()


def test_a_job_with_no_serial_part_scales_with_the_workers() -> None:
    assert amdahl_mod.amdahl(0.0, 100.0, 0.0, 2, 8) == pytest.approx(4.0)


def test_the_serial_head_and_tail_bound_the_speed_up() -> None:
    # T = 10 + 80 + 10 = 100 on 2 workers; on 4: 10 + 10 + 80 * 2 / 4 = 60
    assert amdahl_mod.amdahl(10.0, 80.0, 10.0, 2, 4) == pytest.approx(100 / 60)
    # on the same number of workers nothing changes
    assert amdahl_mod.amdahl(10.0, 80.0, 10.0, 2, 2) == pytest.approx(1.0)


def test_fewer_workers_than_the_body_ran_on_slow_the_job_down() -> None:
    assert amdahl_mod.amdahl(10.0, 80.0, 10.0, 2, 1) == pytest.approx(100 / 180)


def test_the_table_gives_each_worker_count_and_the_limit() -> None:
    phases = {"head_ms": 10.0, "body_ms": 80.0, "tail_ms": 10.0}
    table = amdahl_mod.amdahl_table(phases, 2)
    assert table == {
        "4": round(100 / 60, 2),
        "8": round(100 / 40, 2),
        "16": round(100 / 30, 2),
        "inf": 5.0,
    }
    assert table["4"] < table["8"] < table["16"] < table["inf"]


def test_a_job_that_is_all_body_has_no_limit() -> None:
    table = amdahl_mod.amdahl_table({"head_ms": 0.0, "body_ms": 50.0, "tail_ms": 0.0}, 1)
    assert table["16"] == 16.0
    assert math.isinf(table["inf"])


@pytest.mark.parametrize(
    ("head", "body", "tail", "w0", "n"), [(1, 1, 1, 0, 4), (1, 1, 1, 2, 0), (-1, 1, 1, 2, 4)]
)
def test_impossible_inputs_are_refused(head: float, body: float, tail: float, w0: int, n: int) -> None:
    with pytest.raises(ValueError):
        amdahl_mod.amdahl(head, body, tail, w0, n)
