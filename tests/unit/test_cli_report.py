"""What a batch prints: one line per image, the error line on stderr, and the summary."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tilechord.cli.report import Report, error_line, fail, shown
from tilechord.client import MapProgress, MapResult

RATE = r"\d+\.\d images/s"


def result(tiles: int = 4) -> MapResult:
    return MapResult(index=0, source=Path("a.png"), data=b"x", job_id="j", tiles=tiles, seconds=0.25)


def test_shown_escapes_what_a_terminal_would_obey() -> None:
    assert shown(Path("a\nb\x1b[31m.png")) == "a\\nb\\x1b[31m.png"
    assert shown("plain é.png") == "plain é.png"


def test_errors_are_one_prefixed_line_and_exit_with_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert error_line("boom") == "tilechord: error: boom"
    with pytest.raises(SystemExit) as exited:
        fail("boom", 2)
    assert exited.value.code == 2
    assert capsys.readouterr().err == "tilechord: error: boom\n"


def test_plain_lines_count_images_and_errors_go_to_both_streams(capsys: pytest.CaptureFixture[str]) -> None:
    with Report(12, quiet=False) as report:
        report.progress(MapProgress(done=0, failed=0, total=12, running=1, tiles_done=0, tiles_total=4))
        report.done(Path("a.png"), result(), Path("out/a.png"))
        report.error(Path("b\n.png"), "not an image")
        report.summary(Path("out"))
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert re.fullmatch(rf"\[ 1/12\] ok     a\.png -> out/a\.png \(4 tiles, 0\.25 s, {RATE}\)", lines[0])
    assert lines[1] == "[ 2/12] failed b\\n.png: not an image"
    summary = rf"1 of 12 images written to out, 1 failed; 4 tiles in \d+\.\d s \({RATE}\)"
    assert re.fullmatch(summary, lines[2])
    assert err == "tilechord: error: b\\n.png: not an image\n"
    with pytest.raises(SystemExit) as exited:
        report.fail_if_any()
    assert exited.value.code == 1
    assert capsys.readouterr().err == ""  # the summary already said it


def test_a_quiet_batch_prints_only_errors_and_how_many_failed(capsys: pytest.CaptureFixture[str]) -> None:
    with Report(2, quiet=True) as report:
        report.done(Path("a.png"), result(), Path("out/a.png"))
        report.error("b.png", "not an image")
        report.summary(Path("out"))
    with pytest.raises(SystemExit) as exited:
        report.fail_if_any()
    assert exited.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "tilechord: error: b.png: not an image",
        "tilechord: error: 1 of 2 images failed",
    ]


def test_a_batch_without_failures_exits_normally(capsys: pytest.CaptureFixture[str]) -> None:
    report = Report(1, quiet=True)
    report.done(Path("a.png"), result(), Path("out/a.png"))
    report.fail_if_any()
    assert capsys.readouterr() == ("", "")
