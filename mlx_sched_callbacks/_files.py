"""Atomic file writes (a reader sees the old file or the new one, never half of one), and
reads that refuse anything but a regular file (a FIFO would block a reader for ever)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO")."""
    return next((kind for is_kind, kind in _KINDS if is_kind(mode)), "an unknown kind of file")


def check_regular(path: str | os.PathLike, what: str, *, follow_symlinks: bool = True):
    """``os.stat`` of ``path``, or an error naming it if it is missing or not a regular file."""
    try:
        info = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what} {path} is {file_kind(info.st_mode)}, not a regular file.")
    return info


def open_regular(path: str | os.PathLike, what: str, *, follow_symlinks: bool = True):
    """Open a regular file for reading in binary; anything else is refused without blocking."""
    check_regular(path, what, follow_symlinks=follow_symlinks)
    # O_NONBLOCK: a FIFO swapped in after the check still opens at once, and is refused below.
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"{what} {path} is {file_kind(mode)}, not a regular file.")
    return os.fdopen(fd, "rb")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` survive a power cut."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def naming(error: OSError, message: str) -> OSError:
    """An ``OSError`` that says ``message: cause`` and keeps the cause's errno."""
    named = OSError(f"{message}: {error.strerror or error}")
    named.errno = error.errno
    return named


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over.

    If that fails (a full or read-only disk), the temporary file is removed and the
    ``OSError`` names ``path`` and the cause.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError):
            raise naming(error, f"cannot write {path}") from error
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike, what: str, *, follow_symlinks: bool = True):
    """Read a JSON file, with an error that names the file and the problem."""
    path = Path(path)
    with open_regular(path, what, follow_symlinks=follow_symlinks) as f:
        data = f.read()
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{what} {path} is JSON nested too deeply to read.") from None
    except ValueError as error:  # bad JSON or UTF-8, or an integer over Python's digit limit
        raise ValueError(
            f"{what} {path} is not valid JSON ({error}); it may be truncated or corrupt."
        ) from None
