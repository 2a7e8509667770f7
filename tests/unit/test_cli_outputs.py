"""Output naming and writing: names stay inside the directory, writes are all or nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tilechord.cli import expand_inputs, plan_outputs, safe_name, write_atomic
from tilechord.cli.outputs import check_directory, extension, make_directory
from tilechord.errors import InvalidImage, InvalidOutput, TilechordError

ROOT = Path("/srv/out")
stems = st.text(st.characters(codec="utf-8"), max_size=300)
exts = st.one_of(st.just(""), st.text(max_size=20).map(lambda s: "." + s))


@given(stems, exts)
def test_a_safe_name_is_one_visible_component_of_bounded_length(stem: str, ext: str) -> None:
    name = safe_name(stem, ext)
    assert name not in ("", ".", "..") and not name.startswith(".")
    assert "/" not in name and "\\" not in name
    assert all(c >= " " and c != "\x7f" for c in name)  # no newline or escape sequence to obey
    assert len(name.encode()) <= 200 + 16 * 4
    assert (ROOT / name).parent == ROOT


NAMES = ["a.png", "a.jpg", "b/a.png", "c/a.png", "a", ".a.png", "a-2.png"]


@given(st.lists(st.sampled_from(NAMES), max_size=8))
def test_planned_outputs_are_unique_inside_the_directory_and_never_an_input(names: list[str]) -> None:
    directory = Path("/srv/in")
    inputs = [directory / n for n in names]
    outputs = plan_outputs(inputs, directory, None)
    assert len(outputs) == len(inputs) and len(set(outputs)) == len(outputs)
    assert all(p.parent == directory for p in outputs)
    assert not set(outputs) & set(inputs)


def test_a_format_gives_its_usual_extension_and_every_extension_reads_back_as_its_format() -> None:
    assert [extension(f) for f in ("JPEG", "PNG", "TIFF", "WEBP")] == [".jpg", ".png", ".tif", ".webp"]
    Image.init()
    known = Image.registered_extensions()
    for fmt in Image.SAVE:
        ext = extension(fmt)
        assert known.get(ext, fmt) == fmt, (fmt, ext)


def test_plan_outputs_takes_the_extension_from_the_format_when_given(tmp_path: Path) -> None:
    inputs = [tmp_path / "in" / "x.jpg", tmp_path / "in" / "y.tif"]
    assert [p.name for p in plan_outputs(inputs, tmp_path, "PNG")] == ["x.png", "y.png"]
    assert [p.name for p in plan_outputs(inputs, tmp_path, None)] == ["x.jpg", "y.tif"]


def test_write_atomic_writes_with_the_usual_permissions_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    write_atomic(target, b"pixels")
    assert target.read_bytes() == b"pixels"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_failed_write_removes_its_temporary_and_keeps_what_was_there(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()  # a directory cannot be replaced by a file
    with pytest.raises(OSError):
        write_atomic(target, b"pixels")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_faults_of_the_output_path_are_invalid_output_not_invalid_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidOutput, match=r"^output directory .*missing does not exist$") as missing:
        write_atomic(tmp_path / "missing" / "out.png", b"pixels")
    with pytest.raises(InvalidOutput, match="does not exist"):
        check_directory(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidOutput, match=r"file is a file; with several inputs, -o names a directory$"):
        make_directory(tmp_path / "file")
    assert not isinstance(missing.value, InvalidImage)
    assert isinstance(missing.value, TilechordError) and isinstance(missing.value, ValueError)


def test_make_directory_creates_the_parents_too(tmp_path: Path) -> None:
    make_directory(tmp_path / "a" / "b")
    make_directory(tmp_path / "a" / "b")  # already there: fine
    assert (tmp_path / "a" / "b").is_dir()


def test_a_directory_gives_its_visible_image_files_sorted(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    paths, batch = expand_inputs((str(tmp_path),))
    assert batch and [p.name for p in paths] == ["a.JPG", "b.png"]


def test_a_glob_gives_the_files_it_matches_and_plain_paths_stay_as_given(tmp_path: Path) -> None:
    for name in ("x1.png", "x2.png", "y.png"):
        (tmp_path / name).write_bytes(b"")
    paths, batch = expand_inputs((str(tmp_path / "x*.png"),))
    assert batch and [p.name for p in paths] == ["x1.png", "x2.png"]
    assert expand_inputs((str(tmp_path / "missing.png"),)) == ([tmp_path / "missing.png"], False)
    assert expand_inputs(("a.png", "b.png"))[1] is True


def test_missing_inputs_are_still_invalid_image(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="no image files in the directory"):
        expand_inputs((str(tmp_path),))
    with pytest.raises(InvalidImage, match="no file matches"):
        expand_inputs((str(tmp_path / "*.png"),))
