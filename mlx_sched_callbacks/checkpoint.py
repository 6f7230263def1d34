"""Checkpoint folders that are complete or absent, and optimizer state in safetensors.

A checkpoint is a folder ``step_000000040`` holding any files plus a manifest
written last. It is assembled under a temporary name and renamed into place, so
a run killed while saving leaves a temporary folder that is ignored, never a
half-written checkpoint that would be resumed. Nothing here unpickles: state is
JSON and arrays are safetensors.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ._files import fsync_directory, read_json

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mlx_sched_callbacks.checkpoint"
_STEP_FOLDER = re.compile(r"^step_(\d{9,})$")
_LEFTOVER = re.compile(r"^\.step_(\d{9,})\.(?:tmp|old)-\d+$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:09d}"


def write_checkpoint(
    root: str | os.PathLike, step: int, writers: dict[str, Callable[[Path], None]]
) -> Path:
    """Write a checkpoint for ``step`` under ``root``; return its folder.

    ``writers`` maps a file name to a function that writes that file at the path
    it is given. The folder appears under its final name only once every file
    and the manifest are on disk.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    staging = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    sizes = {}
    for name, write in writers.items():
        path = staging / name
        write(path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        sizes[name] = path.stat().st_size
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "step": step, "files": sizes}
    with open(staging / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_directory(staging)
    if final.exists():
        # Only after a resume that repeats a step: the new copy replaces the old.
        retired = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)
    fsync_directory(root)
    return final


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or ``None`` if it is."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return f"{manifest_path} is missing (the save did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        step = manifest["step"]
    except (ValueError, KeyError, TypeError) as error:
        return f"{manifest_path} is unreadable ({error!r})"
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != 1:
        return (
            f"{manifest_path} has format {manifest.get('format')!r} version "
            f"{manifest.get('version')!r}, expected {MANIFEST_FORMAT!r} version 1"
        )
    if folder.name != checkpoint_name(step):
        return f"{manifest_path} says step {step}, but the folder is {folder.name}"
    for name, size in files.items():
        path = folder / name
        if not path.exists():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {size}"
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
    """The newest complete checkpoint under ``root``; incomplete ones are skipped."""
    for _, folder in reversed(list_checkpoints(root)):
        if checkpoint_problem(folder) is None:
            return folder
    return None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and what killed runs left.

    That is every temporary folder (``.step_*.tmp-<pid>``, ``.step_*.old-<pid>``) and
    every incomplete checkpoint (one a killed prune half deleted) of a step up to the
    newest complete checkpoint's: no save of those steps can still be running.
    """
    found = list_checkpoints(root)
    complete = [(step, f) for step, f in found if checkpoint_problem(f) is None]
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
    mx.save_safetensors(str(path), dict(tree_flatten(optimizer.state)))


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
        expected = dict(tree_flatten(optimizer.state))
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
        target.clear()
        target.update(source)


def read_arrays(path: Path, what: str) -> dict:
    """The arrays of a safetensors file, or an error naming the file."""
    try:
        return mx.load(str(path))
    except Exception as error:  # mlx raises bare RuntimeError/ValueError for bad files
        raise ValueError(f"{what} {path} cannot be read as safetensors: {error}") from None


def check_fit(loaded: dict, expected: dict, what: str, target: str) -> None:
    """Refuse arrays whose names or shapes differ from ``expected``, naming the first few."""
    problems = [f"{k} is missing" for k in sorted(set(expected) - set(loaded))]
    problems += [f"{k} is not in {target}" for k in sorted(set(loaded) - set(expected))]
    problems += [
        f"{k} has shape {tuple(loaded[k].shape)}, this model needs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in loaded and loaded[k].shape != v.shape
    ]
    if problems:
        raise ValueError(
            f"{what} does not fit {target}: "
            + "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        )


def read_checkpoint_json(folder: str | os.PathLike, name: str):
    return read_json(Path(folder) / name, name)
