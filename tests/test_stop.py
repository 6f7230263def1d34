"""Polite stops (SIGTERM, SIGINT) and one writer per run folder, with real processes."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import read_scalars
from test_bad_checkpoints import small_filesystem  # noqa: F401 - a fixture
from test_lm import assert_same_arrays, tiny, write_config  # noqa: F401 - a fixture

from mlx_sched_callbacks.stopping import StopSignals

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def lora(config, *extra):
    return [sys.executable, "-m", "mlx_sched_callbacks", "lora", "--config", str(config), *extra]


def wait_for(path, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def finished_run(tmp_path, tiny, name, iters=60):  # noqa: F811
    config = write_config(tmp_path / f"{name}.yaml", tiny, tmp_path / name, iters=iters,
                          save_every=20, steps_per_report=1)  # fmt: skip
    subprocess.run(lora(config), check=True, capture_output=True, env=ENV)
    return tmp_path / name


def assert_same_run(out, whole, iters=60):
    assert_same_arrays(out / "adapters.safetensors", whole / "adapters.safetensors")
    final = f"checkpoints/step_{iters:09d}/optimizer.safetensors"
    assert_same_arrays(out / final, whole / final)
    for tag in ("train/learning_rate", "train/loss", "val/loss"):
        points = read_scalars(out / "tensorboard", tag)
        assert points == read_scalars(whole / "tensorboard", tag), tag
    assert [s for s, _ in read_scalars(out / "tensorboard")] == list(range(1, iters + 1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_lora_with_a_checkpoint_and_resume_is_exact(tiny, tmp_path, signum):  # noqa: F811
    whole = finished_run(tmp_path, tiny, "whole")
    out = tmp_path / "stopped"
    config = write_config(tmp_path / "c.yaml", tiny, out, iters=60, save_every=20,
                          steps_per_report=1)  # fmt: skip
    process = subprocess.Popen(
        lora(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    wait_for(out / "checkpoints/step_000000020/manifest.json", process)
    time.sleep(0.3)  # between two checkpoints
    sent = time.monotonic()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == 128 + signum, stderr
    said = [line for line in stdout.splitlines() if line.startswith("Stopped by")]
    assert len(said) == 1 and signal.Signals(signum).name in said[0], stdout
    assert said[0].endswith(f"mlx-sched lora --config {config} --resume"), said[0]
    stopped_at = int(said[0].split("after iteration ")[1].split(" ")[0])
    assert 20 <= stopped_at < 60
    assert (out / f"checkpoints/step_{stopped_at:09d}/manifest.json").exists()
    # Every point up to the stop is on disk.
    assert [s for s, _ in read_scalars(out / "tensorboard")] == list(range(1, stopped_at + 1))

    resumed = subprocess.run(lora(config, "--resume"), capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at iteration {stopped_at}" in resumed.stdout
    assert_same_run(out, whole)


def test_a_second_process_on_a_running_run_is_refused_at_once(tiny, tmp_path):  # noqa: F811
    whole = finished_run(tmp_path, tiny, "whole", iters=300)
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny, out, iters=300, save_every=20,
                          steps_per_report=1)  # fmt: skip
    first = subprocess.Popen(
        lora(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    wait_for(out / "checkpoints/step_000000020/manifest.json", first)
    for extra in ([], ["--resume"]):
        started = time.monotonic()
        second = subprocess.run(lora(config, *extra), capture_output=True, text=True, env=ENV)
        seconds = time.monotonic() - started
        assert first.poll() is None, first.communicate()
        assert second.returncode != 0, second.stdout
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{out} is in use by pid {first.pid}" in lines[0], lines
        assert seconds < 15  # refused before a model loads
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert_same_run(out, whole, iters=300)


def test_a_killed_holder_never_blocks(tiny, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny, out, iters=60, save_every=20)
    first = subprocess.Popen(lora(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(out / "checkpoints/step_000000020/manifest.json", first)
    first.kill()
    first.wait()
    resumed = subprocess.run(lora(config, "--resume"), capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr


def test_first_signal_asks_second_ctrl_c_aborts_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM still only asks
        assert stop.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C aborts at once
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_the_custom_loop_example_stops_on_sigterm_and_resumes_exactly(tmp_path):
    example = [sys.executable, "examples/custom_loop.py", "--steps", "300",
               "--checkpoint-every", "50", "--flush-secs", "0"]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([*example, "--out", str(tmp_path / "whole")], check=True, cwd=root,
                   capture_output=True)  # fmt: skip
    out = tmp_path / "stopped"
    process = subprocess.Popen([*example, "--out", str(out)], cwd=root, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    wait_for(out / "checkpoints/step_000000050/manifest.json", process)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 143
    line = next(line for line in stdout.splitlines() if line.startswith("Stopped by"))
    step = int(line.split(" at step ")[1].split(";")[0])
    assert (out / f"checkpoints/step_{step:09d}/manifest.json").exists() and step < 300
    subprocess.run([*example, "--out", str(out), "--resume"], check=True, cwd=root,
                   capture_output=True)  # fmt: skip
    final = "checkpoints/step_000000300/model.safetensors"
    assert_same_arrays(out / final, tmp_path / "whole" / final)
    for tag in ("train/learning_rate", "train/loss"):
        points = read_scalars(out / "tensorboard", tag)
        assert points == read_scalars(tmp_path / "whole/tensorboard", tag)
        assert [s for s, _ in points] == list(range(1, 301))


def test_a_resumed_run_prints_global_iterations(tiny, tmp_path):  # noqa: F811
    import re

    config = write_config(tmp_path / "c.yaml", tiny, tmp_path / "a", iters=30, save_every=10,
                          steps_per_report=5)  # fmt: skip
    subprocess.run(lora(config, "--iters", "20"), check=True, capture_output=True, env=ENV)
    resumed = subprocess.run(lora(config, "--resume"), capture_output=True, text=True, env=ENV)
    assert resumed.returncode == 0, resumed.stderr
    # mlx-lm's table: "  iter   train_loss ..." rows, here 25 and 30, not 5 and 10.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", resumed.stdout)
    rows = [int(m[1]) for m in re.finditer(r"^\s+(\d+)\s+\d+\.\d+ [▼▲]", plain, re.M)]
    assert rows == [25, 30], resumed.stdout


def test_a_full_log_disk_stops_the_run_with_a_checkpoint(tiny, tmp_path, small_filesystem):  # noqa: F811
    from mlx_sched_callbacks.run.checkpoint import checkpoint_problem

    log_disk = small_filesystem("size=16k")
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", tiny, out, iters=400, save_every=100,
                          steps_per_report=1)  # fmt: skip
    done = subprocess.run(lora(config, "--log-dir", str(log_disk / "tb")), capture_output=True,
                          text=True, env=ENV)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    said = [line for line in done.stdout.splitlines() if line.startswith("Stopped after")]
    assert len(said) == 1, done.stdout
    assert "cannot write TensorBoard events" in said[0] and "No space left on device" in said[0]
    stopped_at = int(said[0].split("after iteration ")[1].split(":")[0])
    assert 0 < stopped_at < 400
    checkpoint = out / f"checkpoints/step_{stopped_at:09d}"
    assert f"(checkpoint {checkpoint}). Once it can be written, continue with: " in said[0]
    assert checkpoint_problem(checkpoint) is None
    # With room for the log again, the run continues from the checkpoint to the end.
    resumed = subprocess.run(lora(config, "--resume", "--iters", "400"), capture_output=True,
                             text=True, env=ENV)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at iteration {stopped_at}" in resumed.stdout


def test_an_unwritable_run_folder_is_refused_before_loading(tiny, tmp_path, small_filesystem):  # noqa: F811, E501
    read_only = small_filesystem("size=64k,ro")
    config = write_config(tmp_path / "c.yaml", tiny, read_only / "adapters")
    done = subprocess.run(lora(config), capture_output=True, text=True, env=ENV)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"mlx-sched lora: error: cannot write in run folder {read_only / 'adapters'}: "
        "Read-only file system"
    ]
    assert "Loading pretrained model" not in done.stdout


def test_lora_with_adafactor_that_ignores_the_rate_is_one_line(tiny, tmp_path):  # noqa: F811
    config = write_config(tmp_path / "c.yaml", tiny, tmp_path / "a", optimizer="adafactor")
    done = subprocess.run(lora(config), capture_output=True, text=True, env=ENV)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("mlx-sched lora: error: LRScheduleCallback: Adafactor was built with")
    assert "optimizer_config: {adafactor: {relative_step: false}}" in line
