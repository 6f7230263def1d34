"""Checkpoint folders that are complete or absent, checksummed, and optimizer state in safetensors.

A checkpoint is a folder ``step_000000040`` holding any files plus a manifest
written last, which records each file's size and crc32c. It is assembled under a
temporary name and renamed into place, so a run killed while saving leaves a
temporary folder that is ignored, never a half-written checkpoint that would be
resumed; a file changed later (a flipped bit, an edit) fails its checksum and the
checkpoint is skipped. Nothing here unpickles: state is JSON and arrays are
safetensors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from .._files import check_regular, file_kind, fsync_directory, naming, open_regular, read_json
from ..callback.gradients import WATCH_KEYS

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mlx_sched_callbacks.checkpoint"
MANIFEST_VERSION = 2  # version 1 recorded sizes only; it is still read, without checksums
MAX_STEP = 2**53  # the largest integer every JSON reader keeps exactly
_CHUNK = 1 << 20
_STEP_FOLDER = re.compile(r"^step_(\d{9,})$")
_LEFTOVER = re.compile(r"^\.step_(\d{9,})\.(?:tmp|old)-\d+$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def _shown(value) -> str:
    """``repr(value)``, cut short: a corrupt file can hold a huge value."""
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _step_problem(step) -> str | None:
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return f"step must be an integer from 0 to 2**53, got {_shown(step)}"
    return None


def _name_problem(name) -> str | None:
    plain = isinstance(name, str) and name not in ("", ".", "..", MANIFEST)
    if not plain or "/" in name or "\\" in name or "\0" in name:
        return (
            f"{_shown(name)}, not a plain file name in the checkpoint folder "
            f"(no '/', '..' or absolute path; not {MANIFEST})"
        )
    return None


def file_crc32c(path: str | os.PathLike) -> int:
    """The crc32c of a regular file (not a symlink), read once in chunks."""
    with open_regular(path, "checkpoint file", follow_symlinks=False) as f:
        return _crc32c(f)


def _crc32c(f) -> int:
    crc = 0
    while chunk := f.read(_CHUNK):
        crc = google_crc32c.extend(crc, chunk)
    return crc


def _fsync_and_describe(path: Path) -> dict:
    with open_regular(path, "checkpoint file", follow_symlinks=False) as f:
        crc = _crc32c(f)
        os.fsync(f.fileno())
        return {"size": os.fstat(f.fileno()).st_size, "crc32c": crc}


def write_checkpoint(
    root: str | os.PathLike, step: int, writers: dict[str, Callable[[Path], None]]
) -> Path:
    """Write a checkpoint for ``step`` under ``root``; return its folder.

    ``writers`` maps a file name to a function that writes that file at the path
    it is given. The folder appears under its final name only once every file
    and the manifest are on disk. If a writer or the disk fails (full, read-only),
    nothing of this save is left behind and an ``OSError`` names the checkpoint,
    the file and the cause.
    """
    if (problem := _step_problem(step)) is not None:
        raise ValueError(f"write_checkpoint: {problem}.")
    for name in writers:
        if (problem := _name_problem(name)) is not None:
            raise ValueError(f"write_checkpoint: a file is named {problem}.")
    root = Path(root)
    final = root / checkpoint_name(step)
    staging = root / f".{final.name}.tmp-{os.getpid()}"
    writing = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        files = {}
        for writing, write in writers.items():
            write(staging / writing)
            files[writing] = _fsync_and_describe(staging / writing)
        writing = MANIFEST
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "step": step,
            "files": files,
        }
        with open(staging / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        writing = None
        fsync_directory(staging)
        _move_into_place(staging, final)
        fsync_directory(root)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(error, Exception):  # KeyboardInterrupt: as it came
            raise
        where = f"cannot write checkpoint {final}" + (f" ({writing})" if writing else "")
        if isinstance(error, OSError):
            raise naming(error, where) from error
        raise OSError(f"{where}: {error}") from error  # mlx says RuntimeError for a full disk
    return final


def _move_into_place(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    # Only after a resume that repeats a step: the new copy replaces the old.
    retired = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, retired)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(retired, final)
        raise
    shutil.rmtree(retired, ignore_errors=True)  # a leftover is pruned later


def _manifest_files(manifest, folder: Path) -> dict[str, tuple[int, int | None]]:
    """The files a manifest lists, as ``name: (size, crc32c or None)``; ValueError if malformed."""
    if not isinstance(manifest, dict):
        raise ValueError(f"must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("version")
    if manifest.get("format") != MANIFEST_FORMAT or not _is_int_in(version, 1, 2):
        raise ValueError(
            f"has format {_shown(manifest.get('format'))} version {_shown(version)}, "
            f"expected {MANIFEST_FORMAT!r} version 1 or 2"
        )
    step = manifest.get("step")
    if (problem := _step_problem(step)) is not None:
        raise ValueError(problem)
    if folder.name != checkpoint_name(step):
        raise ValueError(f"says step {step}, but the folder is {folder.name}")
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise ValueError(f"files must be an object, got {_shown(listed)}")
    files = {}
    for name, entry in listed.items():
        if (problem := _name_problem(name)) is not None:
            raise ValueError(f"lists {problem}")
        if version == 1:
            entry = {"size": entry, "crc32c": None}
        if (
            not isinstance(entry, dict)
            or set(entry) != {"size", "crc32c"}
            or not _is_int_in(entry["size"], 0, 2**63)
            or not (version == 1 or _is_int_in(entry["crc32c"], 0, 2**32 - 1))
        ):
            expected = "a size" if version == 1 else '{"size": bytes, "crc32c": checksum}'
            raise ValueError(f"lists {_shown(name)} as {_shown(listed[name])}, expected {expected}")
        files[name] = entry["size"], entry["crc32c"]
    return files


def _is_int_in(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def checkpoint_problem(folder: str | os.PathLike, *, verify: bool = True) -> str | None:
    """Why ``folder`` is not a complete, intact checkpoint, or ``None`` if it is.

    The manifest must be readable and list only regular files inside ``folder``, each
    of the size it records. With ``verify`` (the default; what a resume uses) each
    file is also read once to compare its crc32c. ``verify=False`` reads only the
    manifest and the file sizes (what pruning uses). A version 1 manifest has no
    checksums: its files are checked by size only.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    try:
        manifest = read_json(manifest_path, "checkpoint manifest", follow_symlinks=False)
    except FileNotFoundError:
        return f"{manifest_path} is missing (the save did not finish)"
    except (OSError, ValueError) as error:
        return str(error).rstrip(".")
    try:
        files = _manifest_files(manifest, folder)
    except ValueError as error:
        return f"{manifest_path} {error}"
    for name, (size, _) in files.items():
        path = folder / name
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return f"{path} is missing ({MANIFEST} lists it)"
        except OSError as error:
            return f"{path} cannot be read ({error})"
        if not stat.S_ISREG(info.st_mode):
            return f"{path} is {file_kind(info.st_mode)}, not a regular file"
        if info.st_size != size:
            return f"{path} has {info.st_size} bytes, {MANIFEST} says {size}"
    if not verify:
        return None
    for name, (_, crc) in files.items():
        path = folder / name
        if crc is None:  # a version 1 manifest
            continue
        try:
            found = file_crc32c(path)
        except (OSError, ValueError) as error:
            return f"{path} cannot be read ({error})"
        if found != crc:
            return (
                f"{path} has crc32c {found:08x}, {MANIFEST} says {crc:08x} "
                "(the file changed after it was saved)"
            )
    return None


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Every ``step_*`` folder under ``root`` as ``(step, folder)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_FOLDER.match(folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest checkpoint under ``root`` that passes the full check, checksums included.

    Checkpoints are checked newest first up to the first good one, so normally only
    one is read.
    """
    for _, folder in reversed(list_checkpoints(root)):
        if checkpoint_problem(folder, verify=True) is None:
            return folder
    return None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and what killed runs left.

    Complete means the cheap check (manifest, files and sizes), not the checksums.

    That is every temporary folder (``.step_*.tmp-<pid>``, ``.step_*.old-<pid>``) and
    every incomplete checkpoint (one a killed prune half deleted) of a step up to the
    newest complete checkpoint's: no save of those steps can still be running.
    """
    found = list_checkpoints(root)
    complete = [(step, f) for step, f in found if checkpoint_problem(f, verify=False) is None]
    if not complete:
        return
    newest = complete[-1][0]
    for _, folder in complete[: max(len(complete) - keep, 0)]:
        shutil.rmtree(folder, ignore_errors=True)
    kept = {f for _, f in complete}
    for step, folder in found:
        if step < newest and folder not in kept:
            shutil.rmtree(folder, ignore_errors=True)
    for entry in Path(root).iterdir():
        match = _LEFTOVER.match(entry.name)
        if match and int(match.group(1)) <= newest:
            shutil.rmtree(entry, ignore_errors=True)


def save_optimizer_state(optimizer, path: str | os.PathLike) -> None:
    """Save the whole optimizer state (step, rate, moments) as safetensors."""
    mx.save_safetensors(str(path), _saved_state(optimizer))


def _saved_state(optimizer) -> dict:
    # A GradientWatch's keys describe the last update, not the optimizer: not saved.
    return {k: v for k, v in tree_flatten(optimizer.state) if k not in WATCH_KEYS}


def load_optimizer_state(optimizer, path: str | os.PathLike, parameters=None) -> None:
    """Restore state saved by :func:`save_optimizer_state`, in place.

    The state dict is updated in place, so an ``mx.compile``d step that already
    captured ``optimizer.state`` sees the restored values. With ``parameters``
    (e.g. ``model.trainable_parameters()``), the saved names and shapes are checked
    against the ones this model needs, and a mismatch is reported by name.
    """
    path = Path(path)
    loaded = read_arrays(path, "optimizer state")
    if parameters is not None:
        optimizer.init(parameters)
        expected = _saved_state(optimizer)
        check_fit(loaded, expected, f"optimizer state {path}", "this model and optimizer")
    state = tree_unflatten(list(loaded.items()))
    # A MultiOptimizer's state is a fresh {"states": [...]} on every read: restore
    # each part's own dict instead.
    parts = getattr(optimizer, "optimizers", None)
    targets = [o.state for o in parts] if parts else [optimizer.state]
    sources = state.get("states", []) if parts else [state]
    if len(sources) != len(targets):
        raise ValueError(
            f"optimizer state {path} holds {len(sources)} optimizers' state, this "
            f"optimizer has {len(targets)}."
        )
    for target, source in zip(targets, sources):
        if parameters is None:
            target.clear()
        _update_in_place(target, source)
    if parameters is not None:
        # tree_flatten dropped the empty subtrees (a LoRA model's frozen parts); without
        # them the next update raises KeyError. init() fills in only what is missing.
        optimizer.init(parameters)


def _update_in_place(target: dict, source: dict) -> None:
    """Put ``source``'s values into ``target``, keeping ``target``'s key order.

    The order is the one ``optimizer.init`` gave: a resumed run then saves its
    state in the same order, and so the same bytes, as an uninterrupted one.
    """
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _update_in_place(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and i < len(target[key]):
                    _update_in_place(target[key][i], item)
                elif i < len(target[key]):
                    target[key][i] = item
                else:
                    target[key].append(item)
        else:
            target[key] = value


def read_arrays(path: Path, what: str) -> dict:
    """The arrays of a safetensors file, or an error naming the file."""
    check_regular(path, what)  # mx.load would block for ever on a FIFO
    try:
        return mx.load(str(path))
    except Exception as error:  # mlx raises bare RuntimeError/ValueError for bad files
        raise ValueError(f"{what} {path} cannot be read as safetensors: {error}") from None


def check_fit(loaded: dict, expected: dict, what: str, target: str) -> None:
    """Refuse arrays whose names, shapes or dtypes differ from ``expected``, naming a few."""
    problems = [f"{k} is missing" for k in sorted(set(expected) - set(loaded))]
    problems += [f"{k} is not in {target}" for k in sorted(set(loaded) - set(expected))]
    problems += [
        f"{k} has shape {tuple(loaded[k].shape)}, this model needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in loaded and loaded[k].shape != v.shape
    ]
    problems += [
        f"{k} has dtype {_dtype_name(loaded[k].dtype)}, expected {_dtype_name(v.dtype)}"
        for k, v in expected.items()
        if k in loaded and loaded[k].dtype != v.dtype
    ]
    if problems:
        raise ValueError(
            f"{what} does not fit {target}: "
            + "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        )


def read_checkpoint_json(folder: str | os.PathLike, name: str):
    return read_json(Path(folder) / name, name)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")
