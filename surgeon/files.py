"""Writing output files atomically: check the folder, write a temporary sibling, rename it.

Every file surgeon writes (ONNX models, reports, surgeon files) goes through here: the target's
folder is checked up front (:func:`check_output_path`), the content is written to a hidden
temporary file next to the target (:func:`temp_sibling`), flushed to disk and moved into place
with ``os.replace`` (:func:`publish`). A failure at any step leaves nothing at the target (an
existing file there is untouched) and no temporary file behind. Every error is a
:class:`~surgeon.errors.SurgeonExportError` whose message names the file and what to do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from surgeon.errors import SurgeonExportError

__all__ = [
    "check_output_path",
    "temp_sibling",
    "publish",
    "write_atomic",
    "write_bytes_atomic",
    "copy_file_atomic",
]


def check_output_path(path: str | os.PathLike[str], *, what: str = "output file") -> Path:
    """Return ``path`` made absolute after checking that a file can be written there.

    Raises:
        SurgeonExportError: the folder does not exist, is not a folder, is not writable, or
            ``path`` itself is a folder.
    """
    target = Path(path).expanduser().absolute()
    folder = target.parent
    if target.is_dir():
        raise SurgeonExportError(
            f"{what} {str(target)!r} is a folder; give the path of a file inside it instead"
        )
    if not folder.exists():
        raise SurgeonExportError(
            f"the folder of the {what} {str(target)!r} does not exist; "
            f"create it first (mkdir -p {str(folder)!r}) or choose another path"
        )
    if not folder.is_dir():
        raise SurgeonExportError(
            f"the folder of the {what} {str(target)!r} is not a folder ({str(folder)!r} is a "
            "file); choose another path"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SurgeonExportError(
            f"the folder {str(folder)!r} is not writable, so the {what} cannot be written "
            "there; choose another path or fix the folder's permissions"
        )
    return target


@contextlib.contextmanager
def temp_sibling(target: Path, *, what: str) -> Iterator[Path]:
    """Yield a fresh hidden temporary path next to ``target``; remove it on the way out."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise SurgeonExportError(
            f"cannot create a file in {str(target.parent)!r} for the {what}: "
            f"{exc.strerror or exc}; choose another path or fix the folder's permissions"
        ) from exc
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _file_mode(target: Path) -> int:
    """The mode a new file at ``target`` gets: the old file's, else 0o666 minus the umask."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def publish(temp: Path, target: Path, *, what: str) -> None:
    """Flush ``temp`` to disk, give it ``target``'s mode and move it onto ``target``."""
    try:
        _fsync(temp)
        os.chmod(temp, _file_mode(target))  # mkstemp makes 0o600 files
        os.replace(temp, target)
    except OSError as exc:
        raise SurgeonExportError(
            f"cannot move the {what} into place at {str(target)!r}: {exc.strerror or exc}"
        ) from exc


def write_atomic(
    target: Path, write: Callable[[Path], object], *, what: str, hint: str = ""
) -> Path:
    """Call ``write(temp)`` on a temporary sibling of ``target``, then move it into place.

    ``target`` must already have passed :func:`check_output_path`. An ``OSError`` from
    ``write`` becomes a :class:`SurgeonExportError` (``hint`` is appended to its message); any
    other exception passes through. Either way the temporary file is removed and ``target``
    is untouched.
    """
    with temp_sibling(target, what=what) as temp:
        try:
            write(temp)
        except OSError as exc:
            raise SurgeonExportError(
                f"cannot write the {what} {str(target)!r}: {exc.strerror or exc}{hint}"
            ) from exc
        publish(temp, target, what=what)
    return target


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, what: str = "output file"
) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``.

    Either the whole file is at ``path`` afterwards, or (on any error) ``path`` is untouched.
    """
    target = check_output_path(path, what=what)
    return write_atomic(target, lambda temp: temp.write_bytes(data), what=what)


def copy_file_atomic(
    source: str | os.PathLike[str], path: str | os.PathLike[str], *, what: str = "output file"
) -> Path:
    """Copy ``source`` to ``path`` atomically (temporary sibling, then ``os.replace``)."""
    target = check_output_path(path, what=what)
    return write_atomic(target, lambda temp: shutil.copyfile(source, temp), what=what)
