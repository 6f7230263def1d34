"""A run resumed under a wall clock 10 minutes behind still draws one clean curve.

TensorBoard reads a run's event files in name order, and the name carries the
wall-clock seconds at which the file was opened. The resumed process here runs
under libfaketime (PyPI ``libfaketime``, which bundles the C library; Linux only),
preloaded with ``FAKETIME=-10m``: a real training process whose ``time.time()``
is 600 s behind the process it resumes.
"""

import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_scalars, run_until, served_scalars
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_loop.py"
STEPS = 100
TAG = "train/learning_rate"


def clock_behind_env(offset):
    """The environment of a process whose wall clock runs ``offset`` (libfaketime) behind."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        pytest.skip("libfaketime's PyPI package bundles the library for Linux x86-64 only")
    try:
        import libfaketime
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("needs libfaketime: pip install libfaketime")
    _, additions = libfaketime.get_reload_information()
    library = os.path.join(additions["LD_LIBRARY_PATH"], "libfaketime.so.1")
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    # The monotonic clock stays real: only the wall clock is set back.
    return {**os.environ, "LD_PRELOAD": preload, "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}


def example(out, *extra):
    command = [sys.executable, str(EXAMPLE), "--steps", str(STEPS), "--checkpoint-every", "40"]
    return [*command, "--out", str(out), *extra]


def file_events(path):
    """``(wall_times, first_step_with_a_summary)`` of one event file."""
    events = list(EventFileLoader(str(path)).Load())
    steps = [e.step for e in events if e.HasField("summary")]
    return [e.wall_time for e in events], steps[0] if steps else None


def served_rows(log_dir, load_fast, tag=TAG, want=STEPS):
    """``[[wall_time, step, value], ...]`` as a real TensorBoard server serves them."""
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(log_dir)]
    return served_scalars([*command, f"--load_fast={load_fast}"], tag, want, timeout=30)[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and one killed at step 55 and resumed 10 minutes "earlier"."""
    tmp = tmp_path_factory.mktemp("clock")
    whole, broken = tmp / "whole", tmp / "broken"
    behind = clock_behind_env("-10m")
    subprocess.run(example(whole), check=True, capture_output=True)

    assert run_until(example(broken, "--flush-secs", "0"), "step 55 ") == -signal.SIGKILL
    killed = read_scalars(broken / "tensorboard")
    assert killed[-1][0] >= 55  # points past the checkpoint at 40 exist and must be hidden

    resumed = subprocess.run(
        example(broken, "--resume"), env=behind, check=True, capture_output=True, text=True
    )
    assert "at step 40" in resumed.stdout
    return whole / "tensorboard", broken / "tensorboard"


def test_the_resumed_process_really_ran_10_minutes_behind(runs):
    _, broken = runs
    files = {first: wall_times for wall_times, first in map(file_events, broken.iterdir())}
    assert sorted(files) == [1, 41]  # the killed run's file, then the resumed one's
    assert max(files[41]) < min(files[1]) - 500


def test_the_event_accumulator_shows_the_uninterrupted_curve(runs):
    whole, broken = runs
    expected = read_scalars(whole)
    assert [step for step, _ in expected] == list(range(1, STEPS + 1))
    assert read_scalars(broken) == expected
    assert read_scalars(broken, "train/loss") == read_scalars(whole, "train/loss")


@pytest.mark.parametrize("load_fast", ["true", "false"])
def test_the_tensorboard_server_shows_the_uninterrupted_curve(runs, load_fast):
    whole, broken = runs
    rows = served_rows(broken, load_fast)
    assert [(step, value) for _, step, value in rows] == read_scalars(whole)
