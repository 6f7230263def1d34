"""Stop a real training run over and over (SIGKILL, SIGTERM, SIGINT), resume it, lose nothing.

Issue "Reliability: nothing lost under kills". Each test runs a program through
``fault_run.py`` (which wraps, in its own process only, the names the program calls, so
that it can stop at a chosen point) and kills it with SIGKILL more than 20 times in a row,
resuming from the newest complete checkpoint each time. A third of the kills at random
moments are polite stops instead (SIGTERM or SIGINT), which must exit with 128 + the
signal and a checkpoint at the stop. Half the kills hit a pause point
chosen in turn from a seeded shuffle: inside a step, inside event writing (with and
without a torn record), inside each stage of a checkpoint write, inside the prune that
follows it. The other half come after a seeded random delay, wherever the run is then.

After every kill, before the next resume:

- every ``step_*`` folder is either complete, loadable and holding bit for bit the arrays
  (and the JSON) of the uninterrupted run's checkpoint of that step, or an older one
  (half pruned) that ``latest_checkpoint`` skips; temporary folders are never resumed:
  the resumed process must choose what ``latest_checkpoint`` chooses.

At the end the final weights, optimizer and callback state are bitwise the uninterrupted
run's, and TensorBoard's reader shows one point per step, no duplicate, no gap, each equal
to the uninterrupted run's.
"""

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars

from mlx_sched_callbacks import LRScheduleCallback, schedules
from mlx_sched_callbacks.run.checkpoint import (
    checkpoint_name,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
)
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

HERE = Path(__file__).resolve().parent
FAULT_RUN = HERE / "fault_run.py"
# Among the kills at random moments, some are polite stops (by attempt % 6).
POLITE_STOPS = {1: signal.SIGTERM, 3: signal.SIGINT}
PAUSE_POINTS = ("step", "event", "torn", "manifest", "renamed", "prune")
LINE_TIMEOUT = 60  # seconds to wait for an expected line (a process starts in 1-4 s)
RUN_TIMEOUT = 120  # seconds for a whole uninterrupted run


@dataclass
class Program:
    """One program that fault_run.py can run, and how to read its progress."""

    name: str  # fault_run.py's first argument
    args: list  # its arguments, less --out and --resume
    every: int  # steps between checkpoints
    total: int  # steps in the run
    progress: re.Pattern  # a line saying that step N is done
    files: tuple  # the files in a checkpoint
    tags: tuple  # TensorBoard tags whose points must match the uninterrupted run's
    timer_max: float  # the longest random delay, in seconds after the resume choice
    timer_cap: int  # a random kill comes no later than this many steps past the resume
    extra_points: tuple = ()

    def command(self, out, *extra):
        return [sys.executable, str(FAULT_RUN), self.name, *self.args, "--out", str(out), *extra]


class Process:
    """A subprocess whose output a thread reads line by line, so it never blocks on a pipe."""

    def __init__(self, command, env):
        self.popen = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines = []
        self.ended = False
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self.popen.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate, timeout):
        """The first line matching ``predicate``; None when time is up or output ends."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return None
            if line is None:
                self.ended = True
                return None
            self.lines.append(line)
            if predicate(line):
                return line
        return None

    def kill(self):
        return self.stop(signal.SIGKILL)

    def stop(self, signum):
        os.kill(self.popen.pid, signum)
        return self.finish()

    def finish(self, timeout=30):
        returncode = self.popen.wait(timeout=timeout)
        self.wait_for(lambda line: False, timeout=10)  # the rest of the output
        self._thread.join(timeout=10)
        self.popen.stdout.close()
        return returncode

    def tail(self, n=15):
        return "\n".join(self.lines[-n:])


def assert_same_checkpoint(folder, reference):
    """The same files holding the same arrays, bit for bit, and the same JSON.

    Bytes may differ: after a resume, optimizer state comes back from safetensors in
    another key order, and so is written back in that order.
    """
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(p.name for p in reference.iterdir()), folder
    for name in names:
        path = folder / name
        if name.endswith(".safetensors"):
            ours, theirs = mx.load(str(path)), mx.load(str(reference / name))
            assert sorted(ours) == sorted(theirs), path
            for key, array in ours.items():
                assert array.dtype == theirs[key].dtype and array.shape == theirs[key].shape
                assert np.array(array).tobytes() == np.array(theirs[key]).tobytes(), (path, key)
        else:
            ours, theirs = json.loads(path.read_text()), json.loads((reference / name).read_text())
            if name == "manifest.json":  # file sizes follow the key order above
                assert sorted(ours.pop("files")) == sorted(theirs.pop("files")), path
            assert ours == theirs, path


def assert_loadable(folder):
    """Every file of a checkpoint reads back with the library's own readers."""
    for path in folder.glob("*.safetensors"):
        assert mx.load(str(path)), path
    callback = LRScheduleCallback(schedules.constant(0.0), optim.SGD(learning_rate=0.0))
    callback.load(folder / "callback.json", allow_schedule_change=True)
    assert checkpoint_name(callback.step) == folder.name


def check_checkpoints(root, snapshots):
    """Check every folder under ``root``; return (newest complete step, complete, incomplete)."""
    complete, incomplete = [], []
    for step, folder in list_checkpoints(root):
        if checkpoint_problem(folder) is None:
            if (snapshots / folder.name).exists():
                assert_same_checkpoint(folder, snapshots / folder.name)
            else:  # a polite stop's, between two of the uninterrupted run's: checked later
                assert_loadable(folder)
            complete.append(step)
        else:
            incomplete.append(step)
    step_names = {folder.name for _, folder in list_checkpoints(root)}
    others = [p.name for p in root.iterdir() if p.name not in step_names] if root.exists() else []
    assert all(name.startswith(".step_") for name in others), others
    newest = max(complete, default=0)
    # Only the prune leaves an incomplete step_ folder, and it prunes the oldest.
    assert all(step < newest for step in incomplete), (incomplete, complete)
    chosen = latest_checkpoint(root)
    if complete:
        assert chosen == root / checkpoint_name(newest)
        assert_loadable(chosen)
    else:
        assert chosen is None
    return newest, complete, incomplete


@dataclass
class Kill:
    how: str  # the pause point, or the random delay
    resumed_at: int
    newest_after: int
    last_line: str
    in_checkpoint_write: bool


@dataclass
class Report:
    kills: list = field(default_factory=list)
    seconds: float = 0.0
    left_behind: list = field(default_factory=list)  # ignored folders still on disk at the end

    def text(self):
        rows = [
            f"{i:2d} {k.how:34s} resumed {k.resumed_at:3d} -> newest {k.newest_after:3d}"
            f"{'  (in a checkpoint write)' if k.in_checkpoint_write else ''}  last: {k.last_line}"
            for i, k in enumerate(self.kills, 1)
        ]
        summary = (
            f"{len(self.kills)} kills in {self.seconds:.1f} s; left behind: {self.left_behind}"
        )
        return "\n".join(rows + [summary])


def plan_pause(point, newest, n_complete, program, rng):
    """A FAULT_PAUSE value for ``point`` in a run resumed at ``newest``, or None if not now."""
    every = program.every
    # Saves come every `every` steps; a polite stop's checkpoint may sit between two.
    last_save = newest - newest % every
    if point in ("step", "event", "torn"):
        step = newest + rng.randint(1, 2 * every)
    elif point == "prune":
        # The prune deletes once a 4th complete checkpoint exists.
        ahead = max(1, 4 - n_complete)
        if ahead > 2:
            return None
        step = last_save + ahead * every
    else:
        step = last_save + rng.choice((1, 2)) * every
    if point.startswith("file:"):
        return f"file:{step}:{point[5:]}"
    return f"{point}:{step}"


def kill_and_resume(program, out, snapshots, kills, seed):
    """Kill ``program`` ``kills`` times at pause points and random moments, then finish it."""
    rng = random.Random(seed)
    root = out / "checkpoints"
    report = Report()
    points = [*PAUSE_POINTS, *(f"file:{name}" for name in program.files), *program.extra_points]
    todo = []
    start = time.monotonic()
    for attempt in range(kills):
        newest, complete, _ = check_checkpoints(root, snapshots)
        expected = latest_checkpoint(root)
        spec = None
        if attempt % 2 == 0:
            if not todo:
                todo = rng.sample(points, len(points))
            for _ in range(len(todo)):
                point = todo.pop(0)
                spec = plan_pause(point, newest, len(complete), program, rng)
                if spec is not None:
                    break
                todo.append(point)
        env = dict(os.environ)
        env.pop("FAULT_PAUSE", None)
        if spec is not None:
            env["FAULT_PAUSE"] = spec
        process = Process(program.command(out, "--resume"), env)
        try:
            chosen = process.wait_for(lambda line: line.startswith("CHOSEN "), LINE_TIMEOUT)
            assert chosen == f"CHOSEN {expected}", process.tail()
            if spec is not None:
                how = spec
                paused = process.wait_for(lambda line: line.startswith("PAUSED"), LINE_TIMEOUT)
                assert paused == f"PAUSED {spec}", process.tail()
            else:
                delay = rng.uniform(0, program.timer_max)
                stop_signal = POLITE_STOPS.get(attempt % 6, signal.SIGKILL)
                how = f"{stop_signal.name} after {delay * 1000:.0f} ms"
                cap = newest + program.timer_cap
                if stop_signal != signal.SIGKILL:  # once training, and so its handlers, began
                    assert process.wait_for(program.progress.match, LINE_TIMEOUT), process.tail()

                def past_cap(line, cap=cap):
                    match = program.progress.match(line)
                    return match is not None and int(match.group(1)) >= cap

                process.wait_for(past_cap, delay)
                assert not process.ended, (
                    f"the run ended before kill {attempt + 1}:\n{process.tail()}"
                )
        except BaseException:
            process.kill()
            raise
        if spec is None and stop_signal != signal.SIGKILL:
            returncode = process.stop(stop_signal)
            assert returncode == 128 + stop_signal, process.tail()
            assert any(line.startswith("Stopped by") for line in process.lines), process.tail()
            # The polite stop checkpoints where it stops: no step it reported is lost.
            done = [int(m.group(1)) for m in map(program.progress.match, process.lines) if m]
            assert check_checkpoints(root, snapshots)[0] >= max(done), process.tail()
        else:
            returncode = process.kill()
            assert returncode == -signal.SIGKILL, process.tail()
        staging = [p for p in root.glob(".step_*") if p.name.endswith(f"-{process.popen.pid}")]
        newest_after, _, _ = check_checkpoints(root, snapshots)
        last = next((line for line in reversed(process.lines) if "\x1b" not in line), "")
        report.kills.append(Kill(how, newest, newest_after, last, bool(staging)))

    expected = latest_checkpoint(root)
    final = Process(program.command(out, "--resume"), {**os.environ, "FAULT_PAUSE": ""})
    try:
        chosen = final.wait_for(lambda line: line.startswith("CHOSEN "), LINE_TIMEOUT)
        assert chosen == f"CHOSEN {expected}", final.tail()
        returncode = final.finish(timeout=RUN_TIMEOUT)
    finally:
        if final.popen.poll() is None:
            final.kill()
    assert returncode == 0, final.tail()
    report.seconds = time.monotonic() - start
    _, _, incomplete = check_checkpoints(root, snapshots)
    temporaries = [p.name for p in root.iterdir() if p.name.startswith(".")]
    report.left_behind = sorted(temporaries) + [checkpoint_name(step) for step in incomplete]
    print(f"\n{program.name}:\n{report.text()}")
    return report


def uninterrupted(program, out, snapshots):
    env = {**os.environ, "FAULT_PAUSE": "", "FAULT_SNAPSHOT": str(snapshots)}
    subprocess.run(
        program.command(out), env=env, check=True, capture_output=True, timeout=RUN_TIMEOUT
    )


def assert_same_arrays(path, reference):
    a, b = mx.load(str(path)), mx.load(str(reference))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)


def assert_nothing_lost(program, out, whole, snapshots, report, kills):
    assert len(report.kills) == kills >= 20
    paused = {k.how.split(":")[0] for k in report.kills if " after " not in k.how}
    stops = {k.how.split()[0] for k in report.kills if " after " in k.how}
    assert stops == {"SIGKILL", "SIGTERM", "SIGINT"}, stops
    paused |= {f"file:{k.how.split(':')[2]}" for k in report.kills if k.how.startswith("file:")}
    expected_points = {*PAUSE_POINTS, *(f"file:{n}" for n in program.files)}
    assert paused >= expected_points | set(program.extra_points), paused
    assert any(k.newest_after > k.resumed_at for k in report.kills)  # kills make progress
    assert report.left_behind == []  # the last save pruned what the killed runs left

    newest, complete, _ = check_checkpoints(out / "checkpoints", snapshots)
    assert newest == program.total
    final, reference = (
        out / "checkpoints" / checkpoint_name(newest),
        snapshots / checkpoint_name(newest),
    )
    assert_same_checkpoint(final, reference)
    for name in program.files:
        if name.endswith(".safetensors"):
            assert_same_arrays(final / name, reference / name)

    for tag in program.tags:
        points = read_scalars(out / "tensorboard", tag)
        assert points == read_scalars(whole / "tensorboard", tag), tag
        steps = [step for step, _ in points]
        assert steps == sorted(set(steps)), tag
    rates = read_scalars(out / "tensorboard")
    assert [step for step, _ in rates] == list(range(1, program.total + 1))


def test_custom_loop_loses_nothing_under_24_sigkills(tmp_path):
    program = Program(
        name="custom",
        args=["--steps", "400", "--checkpoint-every", "5", "--flush-secs", "0"],
        every=5,
        total=400,
        progress=re.compile(r"^step (\d+) "),
        files=("model.safetensors", "optimizer.safetensors", "callback.json"),
        tags=("train/learning_rate", "train/loss"),
        timer_max=0.04,
        timer_cap=15,
    )
    whole, snapshots, out = tmp_path / "whole", tmp_path / "snapshots", tmp_path / "killed"
    uninterrupted(program, whole, snapshots)
    report = kill_and_resume(program, out, snapshots, kills=24, seed=1)
    assert_nothing_lost(program, out, whole, snapshots, report, kills=24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_dataset(root / "data")


def test_mlx_lm_loses_nothing_under_24_sigkills(tiny, tmp_path):
    model, data = tiny
    program = Program(
        name="lm",
        args=["--model", str(model), "--data", str(data), "--iters", "120", "--save-every", "2"],
        every=2,
        total=120,
        progress=re.compile(r"^iteration (\d+)$"),
        files=("adapters.safetensors", "optimizer.safetensors", "callback.json", "trainer.json"),
        tags=("train/learning_rate", "train/loss", "val/loss", "train/trained_tokens"),
        timer_max=0.6,
        timer_cap=5,
        extra_points=("adapter",),
    )
    whole, snapshots, out = tmp_path / "whole", tmp_path / "snapshots", tmp_path / "killed"
    uninterrupted(program, whole, snapshots)
    report = kill_and_resume(program, out, snapshots, kills=24, seed=2)
    assert_nothing_lost(program, out, whole, snapshots, report, kills=24)
    # mlx-lm's own adapter files, every numbered one included, as the uninterrupted run's.
    numbered = sorted(p.name for p in whole.glob("*_adapters.safetensors"))
    present = sorted(p.name for p in out.glob("*_adapters.safetensors"))
    assert present == numbered and present
    for name in ["adapters.safetensors", *present]:
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name


def test_mlx_lm_numbered_adapter_file_survives_a_kill_after_its_checkpoint(tiny, tmp_path):
    model, data = tiny
    args = ["lm", "--model", str(model), "--data", str(data), "--iters", "6", "--save-every", "2"]
    command = [sys.executable, str(FAULT_RUN), *args, "--out", str(tmp_path), "--resume"]
    process = Process(command, {**os.environ, "FAULT_PAUSE": "adapter:4"})
    try:
        assert process.wait_for(lambda line: line.startswith("PAUSED"), LINE_TIMEOUT)
    finally:
        assert process.kill() == -signal.SIGKILL, process.tail()
    env = {**os.environ, "FAULT_PAUSE": ""}
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=RUN_TIMEOUT)
    assert (tmp_path / "checkpoints" / "step_000000004").is_dir()
    names = sorted(p.name for p in tmp_path.glob("[0-9]*_adapters.safetensors"))
    assert names == [f"{i:07d}_adapters.safetensors" for i in (2, 4, 6)]
