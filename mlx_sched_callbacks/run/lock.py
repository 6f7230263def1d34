"""One writer per run folder: a lock that dies with the process that holds it.

Two processes writing the same adapters, checkpoints or event files interleave
them into a run that is neither one. The lock is ``flock`` on the folder itself:
the kernel drops it when the holder exits, is killed or crashes, so a stale lock
never blocks anyone, and no lock file is left among the run's files. On Linux the
message a second process gets names the holder (from ``/proc/locks``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

# Folders this process holds, by resolved path: holding one again is a no-op.
_held: dict[Path, int] = {}


class RunFolderBusyError(RuntimeError):
    """Another process holds the run folder."""


def _holder(folder: Path) -> str:
    """``pid N (command line)`` of the process holding ``folder``, where Linux tells."""
    try:
        st = folder.stat()
        device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and device in fields:
                pid = fields[fields.index(device) - 1]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                return f"pid {pid} ({command.decode(errors='replace').strip()[:200]})"
    except (OSError, ValueError, IndexError):
        pass
    return "another process"


def hold_run_folder(folder: str | os.PathLike) -> Path:
    """Hold ``folder`` for this process until it exits; refuse if another process holds it.

    Creates the folder if needed and checks that a file can be written in it.
    Raises :class:`RunFolderBusyError` naming the holder, or ``OSError`` naming the
    folder and the cause (read-only, no space, a file where the folder should be).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
        if key in _held:
            return folder
        check_writable(folder)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise _cannot_write(folder, "run folder", error) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise
        raise RunFolderBusyError(
            f"{folder} is in use by {_holder(folder)}; one process at a time may write a "
            "run: wait for it to finish or stop it (Ctrl-C stops it with a checkpoint), or "
            "choose another folder."
        ) from None
    _held[key] = fd
    return folder


def check_writable(folder: Path, what: str = "run folder") -> None:
    """Refuse, naming ``folder``, if a file cannot be written in it (read-only, full)."""
    probe = folder / f".mlx-sched-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as error:
        raise _cannot_write(folder, what, error) from None


def _cannot_write(folder: Path, what: str, error: OSError) -> OSError:
    if error.strerror and error.strerror.startswith("cannot write in "):
        return error
    return OSError(error.errno, f"cannot write in {what} {folder}: {error.strerror or error}")


def hold_run_folders(*folders) -> None:
    """Hold each folder given (``None`` entries are skipped)."""
    for folder in folders:
        if folder is not None:
            hold_run_folder(folder)


def release_run_folder(folder: str | os.PathLike) -> None:
    """Let another process take ``folder`` (the end of this process does the same)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)
