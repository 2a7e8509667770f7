"""Issue #18's output and input edges, before any cluster: unwritable targets, wrong inputs, names.

Tests run as root here, where file modes stop no write: the read-only directory is /sys
(sysfs takes no new file, even from root), and the other faults are structural (a path
under a file, a missing parent, a directory where the file must go).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from tilechord.cli import cli, expand_inputs, plan_outputs, write_atomic
from tilechord.cli.outputs import batch_directory, check_targets, check_writable, names_directory
from tilechord.cli.run import run
from tilechord.errors import InvalidImage, InvalidOutput


def _sys_is_read_only() -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return True
    os.close(fd)
    os.unlink(probe)
    return False


read_only = pytest.mark.skipif(not _sys_is_read_only(), reason="/sys takes new files here")


@pytest.fixture(autouse=True)
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A clean directory with two small images and a plain file, and no TILECHORD_* setting."""
    for name in [k for k in os.environ if k.startswith("TILECHORD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "UPPER.JPG", "JPEG")
    (tmp_path / "afile").write_bytes(b"")
    yield tmp_path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@read_only
def test_a_directory_that_takes_no_file_is_refused_naming_the_target() -> None:
    with pytest.raises(InvalidOutput, match=r"^cannot write /sys/out\.png: cannot create a file in /sys \("):
        check_writable(Path("/sys/out.png"))


def test_every_structural_fault_names_the_target(here: Path) -> None:
    with pytest.raises(
        InvalidOutput, match=r"^cannot write afile/out\.png: afile is a file, not a directory$"
    ):
        check_writable(Path("afile/out.png"))
    with pytest.raises(
        InvalidOutput, match=r"^output directory no/dir does not exist: cannot write no/dir/x\.png$"
    ):
        check_writable(Path("no/dir/x.png"))
    (here / "taken.png").mkdir()
    with pytest.raises(InvalidOutput, match=r"^cannot write taken\.png: it is a directory$"):
        check_writable(Path("taken.png"))
    with pytest.raises(InvalidOutput, match=r"^cannot write taken\.png: it is a directory$"):
        check_targets([Path("a.jpg"), Path("taken.png")])


def test_a_writable_target_passes_and_the_probe_leaves_nothing(here: Path) -> None:
    before = listing(here)
    check_writable(here / "out.png")
    check_targets([here / "x.png", here / "y.png"])
    assert listing(here) == before


def test_a_failed_write_names_the_target_never_the_temporary(here: Path) -> None:
    (here / "taken").mkdir()
    with pytest.raises(OSError) as failed:
        write_atomic(here / "taken", b"pixels")
    assert failed.value.filename == str(here / "taken")
    assert ".part" not in str(failed.value)
    assert listing(here) == sorted(["a.png", "UPPER.JPG", "afile", "taken"])


def test_several_inputs_refuse_an_output_that_names_an_image_file(here: Path) -> None:
    with pytest.raises(InvalidOutput, match=r"^-o single\.png names a file, but 2 images need a directory"):
        batch_directory("single.png", 2)
    assert batch_directory("single.png/", 2) == Path("single.png")  # asked for: a directory of that name
    assert batch_directory("edited", 2) == Path("edited")
    assert batch_directory("v1.0", 2) == Path("v1.0")  # not an image extension
    (here / "made.png").mkdir()
    assert batch_directory("made.png", 2) == Path("made.png")  # exists as a directory already
    assert listing(here) == sorted(["a.png", "UPPER.JPG", "afile", "made.png"])


def test_an_output_names_a_directory_if_it_is_one_or_ends_in_a_slash(here: Path) -> None:
    assert names_directory("new/") and names_directory(str(here))
    assert not names_directory("new") and not names_directory("a.png")


def test_an_input_ending_in_a_slash_must_be_a_directory() -> None:
    with pytest.raises(InvalidImage, match=r"^the input directory nosuchdir/ does not exist$"):
        expand_inputs(("nosuchdir/",))
    with pytest.raises(InvalidImage, match=r"^the input directory afile/ is not a directory$"):
        expand_inputs(("afile/",))


def test_outputs_keep_the_extensions_case_and_names_differing_in_case_only_do_not_collide(
    tmp_path: Path,
) -> None:
    inputs = [tmp_path / "a" / "X.JPG", tmp_path / "b" / "x.jpg", tmp_path / "c" / "Photo.Tif"]
    names = [p.name for p in plan_outputs(inputs, tmp_path / "out", None)]
    assert names == ["X.JPG", "x-2.jpg", "Photo.Tif"]
    assert [p.name for p in plan_outputs(inputs[:1], tmp_path, "PNG")] == ["X.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["a.png", "UPPER.JPG", "-o", "single.png"],
            "-o single.png names a file, but 2 images need a directory",
        ),
        (["nosuchdir/", "-o", "out/"], "the input directory nosuchdir/ does not exist"),
        (["missing.png", "-o", "out/"], "no such file: missing.png"),
        (["a.png", "-o", "afile/out.png"], "cannot write afile/out.png: afile is a file, not a directory"),
        (["a.png", "UPPER.JPG", "-o", "afile/x/"], "cannot create the output directory afile/x: "),
    ],
)
def test_wrong_inputs_and_outputs_are_one_line_and_create_nothing(
    here: Path, args: list[str], message: str
) -> None:
    before = listing(here)
    done = CliRunner().invoke(cli, ["run", *args], prog_name="tilechord")
    assert done.exit_code == 1, done.output
    assert done.stderr.startswith(f"tilechord: error: {message}") and done.stderr.count("\n") == 1, (
        done.stderr
    )
    assert done.stdout == ""
    assert listing(here) == before


@read_only
def test_an_unwritable_single_output_is_invalid_output_before_any_cluster() -> None:
    with pytest.raises(InvalidOutput, match=r"/sys/out\.png"):
        run.main(["a.png", "-o", "/sys/out.png"], prog_name="tilechord run", standalone_mode=False)
