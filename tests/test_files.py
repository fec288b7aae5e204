"""Atomic output files (surgeon/files.py): the target's folder is checked up front, the content
goes to a hidden temporary sibling and is moved into place; on any failure nothing partial is
left (an existing file is untouched, no temporary file stays) and the error names the path.
The folder checks are also seen through ``surgeon.export``, which writes through here."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import surgeon.files as files
from surgeon.errors import SurgeonExportError
from surgeon.exporter import export
from surgeon.files import (
    check_output_path,
    copy_file_atomic,
    temp_sibling,
    write_atomic,
    write_bytes_atomic,
)
from tests.helpers import tiny_conv

# --------------------------------------------------------------------------------------------
# The output folder, through surgeon.export.
# --------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path) -> None:
    model, x = tiny_conv()
    with pytest.raises(SurgeonExportError, match="does not exist"):
        export(model, x, tmp_path / "nope" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_folder_is_a_file(tmp_path) -> None:
    model, x = tiny_conv()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SurgeonExportError, match="is not a folder"):
        export(model, x, tmp_path / "file" / "m.onnx")


def test_path_is_a_folder(tmp_path) -> None:
    model, x = tiny_conv()
    with pytest.raises(SurgeonExportError, match="is a folder"):
        export(model, x, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder(tmp_path) -> None:
    model, x = tiny_conv()
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(SurgeonExportError, match="not writable"):
            export(model, x, folder / "m.onnx")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(stat.S_IRWXU)


def test_folder_that_refuses_files(tmp_path, monkeypatch) -> None:
    """Where the OS refuses the write (read-only mount, quota), the error says so."""
    model, x = tiny_conv()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("surgeon.exporter.tempfile.mkstemp", refuse)
    with pytest.raises(SurgeonExportError, match="cannot create a file in .*Permission denied"):
        export(model, x, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_normal_permissions(tmp_path) -> None:
    model, x = tiny_conv()
    umask = os.umask(0)
    os.umask(umask)
    path = export(model, x, tmp_path / "m.onnx")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# --------------------------------------------------------------------------------------------
# The folder check, the temporary sibling and the atomic write.
# --------------------------------------------------------------------------------------------


def test_the_checked_path_is_absolute(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert check_output_path("out.bin") == tmp_path / "out.bin"
    assert check_output_path("out.bin").is_absolute()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_output_path("~/r.json") == tmp_path / "r.json"


@pytest.mark.parametrize("case", ["missing folder", "folder is a file", "path is a folder"])
def test_a_refused_path_is_named_in_the_error(case, tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    path = {
        "missing folder": tmp_path / "nope" / "r.json",
        "folder is a file": tmp_path / "file" / "r.json",
        "path is a folder": tmp_path,
    }[case]
    with pytest.raises(SurgeonExportError) as info:
        check_output_path(path, what="report file")
    assert repr(str(path)) in str(info.value) and "report file" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_temporary_sibling_is_hidden_beside_the_target_and_removed(tmp_path) -> None:
    target = tmp_path / "m.onnx"
    with pytest.raises(RuntimeError), temp_sibling(target, what="ONNX file") as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".m.onnx.")
        assert temp.suffix == ".tmp" and temp.exists()
        raise RuntimeError("the writer failed")
    assert list(tmp_path.iterdir()) == []


def _partial_then(exc: BaseException):
    def write(temp: Path) -> None:
        temp.write_bytes(b"half a fi")  # a partial file first, then the failure
        raise exc

    return write


def test_a_failed_write_leaves_nothing_and_names_the_path(tmp_path) -> None:
    target = tmp_path / "out.bin"
    full = OSError(28, "No space left on device")
    with pytest.raises(SurgeonExportError) as info:
        write_atomic(target, _partial_then(full), what="output file", hint="; free some space")
    message = str(info.value)
    assert f"cannot write the output file {str(target)!r}" in message
    assert message.endswith("No space left on device; free some space")
    assert info.value.__cause__ is full
    assert list(tmp_path.iterdir()) == []  # no target, no temporary file


def test_a_failed_write_keeps_the_existing_file(tmp_path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"the old content")
    with pytest.raises(SurgeonExportError, match="out.bin"):
        write_atomic(target, _partial_then(OSError(5, "I/O error")), what="output file")
    assert target.read_bytes() == b"the old content"
    assert list(tmp_path.iterdir()) == [target]


def test_an_error_that_is_not_an_oserror_passes_through_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="bad model"):
        write_atomic(target, _partial_then(ValueError("bad model")), what="output file")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_a_failed_move_into_place_names_the_target(tmp_path, monkeypatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(files.os, "replace", refuse)
    with pytest.raises(SurgeonExportError) as info:
        write_bytes_atomic(target, b"new")
    assert str(info.value) == (
        f"cannot move the output file into place at {str(target)!r}: Invalid cross-device link"
    )
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_write_bytes_replaces_the_whole_file_and_keeps_its_mode(tmp_path) -> None:
    target = tmp_path / "out.bin"
    assert write_bytes_atomic(target, b"first") == target
    assert target.read_bytes() == b"first"
    target.chmod(0o640)
    write_bytes_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert list(tmp_path.iterdir()) == [target]


def test_copy_file_copies_and_a_missing_source_leaves_nothing(tmp_path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 40)
    copied = copy_file_atomic(source, tmp_path / "copy.bin", what="surgeon file")
    assert copied.read_bytes() == source.read_bytes() and len(copied.read_bytes()) == 10240
    missing = tmp_path / "missing.bin"
    target = tmp_path / "other.bin"
    with pytest.raises(SurgeonExportError) as info:
        copy_file_atomic(missing, target, what="surgeon file")
    assert f"cannot write the surgeon file {str(target)!r}" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "source.bin"]
