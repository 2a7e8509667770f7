"""Issue #18's report edges: singular counts, the single image's closing line, the batch summary's place.

The terminal here is a text buffer that says it is a terminal (``isatty``), so rich draws
its live bar into it exactly as on a screen; tests/test_cli_edges.py does the same on a
real pseudo-terminal.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from tilechord.cli.report import OneReport, Report, count, size_text
from tilechord.client import MapProgress, MapResult

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Screen(io.StringIO):
    """A buffer that is a terminal, as far as rich and the report can tell."""

    def isatty(self) -> bool:
        return True


def on_screen(monkeypatch: pytest.MonkeyPatch) -> Screen:
    """stdout and stderr on one terminal (its text, in order, is what a user would see).

    Called in the test itself: pytest puts its own capture back between a fixture and the test.
    """
    terminal = Screen()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("TERM", "xterm")
    return terminal


def lines_of(terminal: Screen) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", ANSI.sub("", terminal.getvalue())) if line.strip()]


def result(tiles: int) -> MapResult:
    return MapResult(index=0, source=Path("a.png"), data=b"x", job_id="j", tiles=tiles, seconds=0.25)


def test_counts_are_singular_for_one() -> None:
    assert [count(n, "tile") for n in (0, 1, 2)] == ["0 tiles", "1 tile", "2 tiles"]


def test_sizes_read_as_people_read_them() -> None:
    assert [size_text(n) for n in (1, 812, 1000, 35_249, 999_960, 1_234_567, 5 * 10**9)] == [
        "1 byte", "812 bytes", "1.0 kB", "35.2 kB", "1.0 MB", "1.2 MB", "5.0 GB",
    ]  # fmt: skip


def test_one_tile_is_one_tile_in_a_line_the_summary_and_a_quiet_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Report(1, quiet=False) as report:
        report.done(Path("a.png"), result(1), Path("out/a.png"))
        report.summary(Path("out"))
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\[1/1\] ok     a\.png -> out/a\.png \(1 tile, 0\.25 s, \d+\.\d images/s\)", out[0])
    assert re.fullmatch(
        r"1 of 1 image written to out, 0 failed; 1 tile in \d+\.\d s \(\d+\.\d images/s\)", out[1]
    )
    quiet = Report(1, quiet=True)
    quiet.error("b.png", "not an image")
    with pytest.raises(SystemExit):
        quiet.fail_if_any()
    assert capsys.readouterr().err.splitlines()[-1] == "tilechord: error: 1 of 1 image failed"


def test_the_batch_summary_follows_the_bars_last_render_and_agrees_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = on_screen(monkeypatch)
    with Report(3, quiet=False) as report:
        report.progress(MapProgress(done=0, failed=0, total=3, running=2, tiles_done=0, tiles_total=8))
        report.progress(MapProgress(done=3, failed=1, total=3, running=0, tiles_done=8, tiles_total=8))
        report.done(Path("a.png"), result(4), Path("out/a.png"))
        report.error(Path("b.png"), "not an image")
        report.done(Path("c.png"), result(4), Path("out/c.png"))
        report.summary(Path("out"))
    lines = lines_of(screen)
    assert re.fullmatch(
        r"2 of 3 images written to out, 1 failed; 8 tiles in \d+\.\d s \((\d+\.\d) images/s\)", lines[-1]
    )
    rate = re.search(r"\((\d+\.\d) images/s\)", lines[-1]).group(1)  # type: ignore[union-attr]
    bar = [n for n, line in enumerate(lines) if re.search(r"images .* tiles \d+/\d+", line)]
    assert bar and bar[-1] == len(lines) - 2, lines  # the summary comes right below the bar's last render
    last = lines[bar[-1]]
    assert " 3/3 " in last and "tiles 8/8" in last and f"{rate} images/s" in last and "1 failed" in last, last
    assert "tilechord: error: b.png: not an image" in lines


def test_a_failed_write_counts_as_failed_on_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = on_screen(monkeypatch)
    with Report(1, quiet=False) as report:
        report.progress(MapProgress(done=1, failed=0, total=1, running=0, tiles_done=2, tiles_total=2))
        report.error(Path("a.png"), "cannot write out/a.png: no space left on device")
        report.summary(Path("out"))
    lines = lines_of(screen)
    assert "1 failed" in [line for line in lines if re.search(r"images .* 1/1 tiles", line)][-1]
    assert lines[-1].startswith("0 of 1 image written to out, 1 failed;")


def test_one_image_on_a_terminal_ends_with_one_line_saying_what_was_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = on_screen(monkeypatch)
    with OneReport(quiet=False) as report:
        report.progress(0, 6)
        report.progress(6, 6)
        report.written(Path("out.png"), 1_234_567, 6)
    lines = lines_of(screen)
    assert re.fullmatch(r"wrote out\.png \(1\.2 MB, 6 tiles, \d+\.\d s\)", lines[-1]), lines
    assert any("tiles" in line and "6/6" in line for line in lines[:-1]), lines  # the bar came first


@pytest.mark.parametrize("quiet", [True, False])
def test_one_image_is_silent_when_quiet_or_off_a_terminal(
    quiet: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = on_screen(monkeypatch)
    piped = io.StringIO()
    if not quiet:
        monkeypatch.setattr(sys, "stderr", piped)  # stderr piped: nothing to draw on
    with OneReport(quiet=quiet) as report:
        report.progress(1, 1)
        report.written(Path("out.png"), 10, 1)
    assert screen.getvalue() == "" and piped.getvalue() == ""
