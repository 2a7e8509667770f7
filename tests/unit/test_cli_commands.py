"""The commands up to the point where a cluster would start: help, ``ops``, and early errors.

Everything here fails (or finishes) before any Redis or worker is started, so click's
runner drives the commands in this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from tilechord.cli import cli
from tilechord.cli.run import run
from tilechord.errors import InvalidImage, InvalidOutput, UnsupportedFormat
from tilechord.ops.table import markdown_table, rows


@pytest.fixture(autouse=True)
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean directory with two small images, and no TILECHORD_* setting from outside."""
    for name in [k for k in os.environ if k.startswith("TILECHORD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    yield tmp_path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="tilechord")


def test_help_names_every_command_and_version_prints_it() -> None:
    done = invoke("--help")
    assert done.exit_code == 0
    for name in ("ops", "run", "up"):
        assert f"\n  {name} " in done.stdout
    assert invoke("--version").stdout.startswith("tilechord, version ")


def test_ops_markdown_is_the_table_of_the_registry() -> None:
    done = invoke("ops", "--markdown")
    assert done.exit_code == 0
    assert done.stdout == markdown_table() + "\n"


def test_ops_lists_every_operation_in_aligned_columns_with_its_description_below() -> None:
    done = invoke("ops")
    assert done.exit_code == 0
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["operation", "kind", "reach", "parameters"]
    heads = [line for line in lines[1:] if not line.startswith("    ")]
    assert [line.split()[0] for line in heads] == [r[0] for r in rows()]
    kind_at = lines[0].index("kind")
    for line, (_, _, kind, _, doc) in zip(heads, rows(), strict=True):
        assert line[kind_at:].startswith(kind + " ")
        assert f"    {doc}" in lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["a.png", "-o", "no/such/dir/out.png"], "output directory no/such/dir does not exist"),
        (["a.png", "b.png", "-o", "a.png"], "a.png is a file; with several inputs, -o names a directory"),
        (["missing.png", "-o", "out.png"], "no such file: missing.png"),
        (["a.png", "b.png", "-o", "out", "--format", "xyz"], "unknown output format 'xyz'"),
        (["a.png", "-o", "a.png"], "refusing to overwrite the input a.png"),
    ],
)
def test_an_early_error_is_one_line_and_exit_status_1(here: Path, args: list[str], message: str) -> None:
    done = invoke("run", *args)
    assert done.exit_code == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"tilechord: error: {message}") and done.stderr.count("\n") == 1
    assert sorted(p.name for p in here.iterdir()) == ["a.png", "b.png"]  # nothing written or created


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["a.png", "-o", "no/such/dir/out.png"], InvalidOutput),
        (["a.png", "b.png", "-o", "a.png"], InvalidOutput),
        (["missing.png", "-o", "out.png"], InvalidImage),
        (["*.jpg", "-o", "out"], InvalidImage),
        (["a.png", "b.png", "-o", "out", "--format", "xyz"], UnsupportedFormat),
    ],
)
def test_faults_of_the_output_path_and_of_the_inputs_have_their_own_types(
    args: list[str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        run.main(args, prog_name="tilechord run", standalone_mode=False)


def test_usage_errors_exit_with_status_2() -> None:
    done = invoke("run")
    assert done.exit_code == 2 and "Missing argument 'INPUT...'" in done.stderr
    assert invoke("nosuch").exit_code == 2
