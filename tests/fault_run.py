"""Run the custom-loop example or tests/lm_run.py with one pause point, for test_faults.py.

    python tests/fault_run.py custom [examples/custom_loop.py arguments]
    python tests/fault_run.py lm [tests/lm_run.py arguments]

The program runs unchanged; this script only wraps, in its own process, the names the
program calls (the library and the example know nothing of it). Environment:

``FAULT_PAUSE=<point>:<step>[:<file>]`` stops the run at one point, prints
``PAUSED <point>:<step>`` and sleeps until the test kills it. Points:

- ``step``: inside update ``<step>``: applied to the model, not yet counted or logged.
- ``event``: in ``add_scalar`` of update ``<step>``'s rate, before its bytes are written.
- ``torn``: that rate's record on disk with its last 20 bytes missing, as a write cut
  short by the kernel leaves it.
- ``file``: checkpoint ``<step>``'s ``<file>`` half written in the staging folder.
- ``manifest``: checkpoint ``<step>`` complete under its temporary name, not renamed.
- ``renamed``: checkpoint ``<step>`` renamed into place, before the fsync of its parent
  and before the prune.
- ``prune``: the prune after checkpoint ``<step>`` has deleted one file of the oldest
  checkpoint (the first one ``shutil.rmtree`` would delete).
- ``adapter`` (lm): mlx-lm's numbered adapter file of ``<step>`` about to be written.

A pause point that the run never reaches makes it exit with status 3.

``FAULT_SNAPSHOT=<dir>`` copies every checkpoint into ``<dir>`` as soon as it is written
(the program itself keeps only the newest 3).

Prints ``CHOSEN <folder>`` (or ``CHOSEN None``) when the program asks which checkpoint
to resume from.
"""

import importlib.util
import os
import re
import shutil
import sys
import time
from pathlib import Path

from mlx_sched_callbacks.callback import DEFAULT_TAG, LRScheduleCallback
from mlx_sched_callbacks.events import EventWriter
from mlx_sched_callbacks.run import checkpoint as checkpoint_module

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "custom_loop.py"
STEP_FOLDER = re.compile(r"^step_\d{9,}$")

_spec = os.environ.get("FAULT_PAUSE", "")
POINT, _, _rest = _spec.partition(":")
STEP_TEXT, _, FILE = _rest.partition(":")
STEP = int(STEP_TEXT) if STEP_TEXT else None
SNAPSHOT = os.environ.get("FAULT_SNAPSHOT")
# The step of the checkpoint being written, or last written: prune and fsync follow it.
_writing = None


def pause() -> None:
    print(f"PAUSED {_spec}", flush=True)
    while True:
        time.sleep(60)


def _wrap_on_step_end(original):
    def on_step_end(self):
        if POINT == "step" and self.step + 1 == STEP:
            pause()
        original(self)

    return on_step_end


def _wrap_add_scalar(original):
    def add_scalar(self, tag, value, step):
        if tag == DEFAULT_TAG and step == STEP:
            if POINT == "event":
                pause()
            if POINT == "torn":
                original(self, tag, value, step)
                self.flush()
                os.truncate(self.path, self.path.stat().st_size - 20)
                pause()
        original(self, tag, value, step)

    return add_scalar


def _half_written(write):
    def half(path):
        write(path)
        os.truncate(path, path.stat().st_size // 2)
        pause()

    return half


def _wrap_write_checkpoint(original):
    def write_checkpoint(root, step, writers):
        global _writing
        _writing = step
        if POINT == "file" and step == STEP:
            if FILE not in writers:
                sys.exit(f"fault_run: checkpoint {step} has no file {FILE!r}: {list(writers)}")
            writers = {n: _half_written(w) if n == FILE else w for n, w in writers.items()}
        folder = original(root, step, writers)
        if SNAPSHOT:
            shutil.copytree(folder, Path(SNAPSHOT) / folder.name)
        return folder

    return write_checkpoint


def _wrap_fsync_directory(original):
    def fsync_directory(directory):
        directory = Path(directory)
        if STEP is not None and _writing == STEP:
            name = checkpoint_module.checkpoint_name(STEP)
            if POINT == "manifest" and directory.name.startswith(f".{name}.tmp"):
                pause()
            if POINT == "renamed" and (directory / name).is_dir():
                pause()
        original(directory)

    return fsync_directory


class _Shutil:
    """``shutil`` as the checkpoint module sees it, with a ``rmtree`` that can stop midway."""

    def __getattr__(self, name):
        return getattr(shutil, name)

    @staticmethod
    def rmtree(path, *args, **kwargs):
        path = Path(path)
        if POINT == "prune" and _writing == STEP and STEP_FOLDER.match(path.name):
            with os.scandir(path) as entries:
                os.unlink(next(entries).path)
            pause()
        shutil.rmtree(path, *args, **kwargs)


def _wrap_latest_checkpoint(original):
    def latest_checkpoint(root):
        folder = original(root)
        print(f"CHOSEN {folder}", flush=True)
        return folder

    return latest_checkpoint


def _wrap_write_bytes_atomic(original):
    def write_bytes_atomic(path, data):
        if POINT == "adapter" and Path(path).name == f"{STEP:07d}_adapters.safetensors":
            pause()
        original(path, data)

    return write_bytes_atomic


def _wrap_latest_sound_checkpoint(original):
    def latest_sound_checkpoint(self):
        folder, state = original(self)
        print(f"CHOSEN {folder}", flush=True)
        return folder, state

    return latest_sound_checkpoint


def _wrap_common(program) -> None:
    """Wrap the names ``program`` (a module) and the library call at run time."""
    LRScheduleCallback.on_step_end = _wrap_on_step_end(LRScheduleCallback.on_step_end)
    EventWriter.add_scalar = _wrap_add_scalar(EventWriter.add_scalar)
    checkpoint_module.fsync_directory = _wrap_fsync_directory(checkpoint_module.fsync_directory)
    checkpoint_module.shutil = _Shutil()
    program.write_checkpoint = _wrap_write_checkpoint(program.write_checkpoint)
    if hasattr(program, "latest_checkpoint"):
        program.latest_checkpoint = _wrap_latest_checkpoint(program.latest_checkpoint)
    else:  # the library's TrainingRun
        from mlx_sched_callbacks.run.resume import Resume

        found = Resume._latest_sound_checkpoint
        Resume._latest_sound_checkpoint = _wrap_latest_sound_checkpoint(found)


def run_custom(argv) -> None:
    spec = importlib.util.spec_from_file_location("custom_loop", EXAMPLE)
    custom_loop = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(custom_loop)
    _wrap_common(custom_loop)
    custom_loop.main(argv)


def run_lm(argv) -> None:
    sys.path.insert(0, str(HERE))
    import lm_run

    from mlx_sched_callbacks.run import saving

    _wrap_common(saving)
    saving.write_bytes_atomic = _wrap_write_bytes_atomic(saving.write_bytes_atomic)
    sys.argv = [str(HERE / "lm_run.py"), *argv]
    lm_run.main()


def main() -> None:
    program, *argv = sys.argv[1:]
    {"custom": run_custom, "lm": run_lm}[program](argv)
    if POINT:
        print(f"fault_run: pause point {_spec} was never reached", flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
