"""mlx-lm-lora's real trainers through ``mlx-sched lm-lora``: rates, logs, kill + exact resume.

Every run is a real subprocess of tests/lm_lora_run.py; the independent ones run side
by side (most of a run's time is start-up), in two rounds: first runs, then resumes.
"""

import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from conftest import read_scalars, run_folder

from mlx_sched_callbacks.cli.run_options import schedule_from_config

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lm_lora_run import flags  # noqa: E402

pytest.importorskip("mlx_lm_lora")

ITERS, SAVE_EVERY = 8, 4
LR_SCHEDULE = {"name": "cosine_decay", "arguments": [1e-3, 10, 1e-5], "warmup": 2}
SCHEDULE = schedule_from_config(LR_SCHEDULE, 0.0)
# (mode, k): killed after iteration 6 (checkpoint at 4), resumed, compared with a whole run.
RESUMED = [("sft", 2), ("dpo", 2), ("orpo", 2), ("grpo", 2), ("sft", 1)]
# Modes checked for the rate at every step (cpo: mlx's compile fails on CPU, see below).
OTHERS = ["online_dpo", "ppo", "xpo", "rlhf_reinforce", "klpo", "cpo"]
# Timings differ from run to run; every other tag must not.
TIMINGS = {"train/iterations_per_second", "train/tokens_per_second", "train/peak_memory_gb"}


def command(kind, *argv):
    return [sys.executable, str(HERE / "lm_lora_run.py"), kind, *map(str, argv)]


def run(cmd, stop_at=None, sig=signal.SIGKILL, env=None):
    """Run ``cmd``; send ``sig`` when it prints "iteration {stop_at}". Return (code, stdout)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if stop_at is not None and line.strip() == f"iteration {stop_at}":
            process.send_signal(sig)
            stop_at = None
    stderr = process.stderr.read()
    process.wait(timeout=300)
    out = "".join(lines)
    return process.returncode, out + stderr


def in_parallel(jobs: dict) -> dict:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, *job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_lora")
    subprocess.run(command("build", root), check=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"fuse": False, "lr_schedule": LR_SCHEDULE}))
    plain = root / "plain.yaml"
    plain.write_text(yaml.safe_dump({"fuse": False}))

    def ours(name, mode, k, iters=ITERS, config=config):
        # One report per update: a report's point is at the update its iterations belong to.
        options = dict(gradient_accumulation_steps=k, steps_per_report=k)
        return command("ours", *flags(root, mode, root / name, iters, **options), "--config",
                       config)  # fmt: skip

    first = {}
    for mode, k in RESUMED:
        first[f"whole-{mode}-{k}"] = (ours(f"whole-{mode}-{k}", mode, k),)
        first[f"killed-{mode}-{k}"] = (ours(f"killed-{mode}-{k}", mode, k), 6)
    first["termed"] = (ours("termed", "sft", 2), 4, signal.SIGTERM)
    for mode in ("sft", "dpo"):
        first[f"plain-{mode}"] = (ours(f"plain-{mode}", mode, 1, config=plain),)
        theirs = flags(root, mode, root / f"theirs-{mode}", ITERS)
        first[f"theirs-{mode}"] = (command("theirs", *theirs, "--config", plain),)
    for mode in OTHERS:
        # cpo: IndexError (_Map_base::at) inside mlx's compiled step on CPU, with or
        # without us; it trains with compile off.
        env = {"MLX_DISABLE_COMPILE": "1"} if mode == "cpo" else None
        first[f"other-{mode}"] = (ours(f"other-{mode}", mode, 2, iters=4), None, None, env)
    results = in_parallel(first)
    again = {f"resumed-{mode}-{k}": (first[f"killed-{mode}-{k}"][0] + ["--resume"],)
             for mode, k in RESUMED}  # fmt: skip
    again["resumed-termed"] = (first["termed"][0] + ["--resume"],)
    results |= in_parallel(again)
    return root, results


def expected_rates(updates):
    return [(u + 1, float(np.float32(SCHEDULE(u)))) for u in range(updates)]


def assert_same_arrays(path_a, path_b):
    a, b = mx.load(str(path_a)), mx.load(str(path_b))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)


def tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_folder(log_dir)), size_guidance={"scalars": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def ok(results, name):
    code, out = results[name]
    assert code == 0, f"{name} exited {code}:\n{out[-3000:]}"
    return out


@pytest.mark.parametrize("mode,k", RESUMED)
def test_killed_and_resumed_run_is_bit_identical(runs, mode, k):
    root, results = runs
    whole, broken = root / f"whole-{mode}-{k}", root / f"killed-{mode}-{k}"
    ok(results, f"whole-{mode}-{k}")
    assert results[f"killed-{mode}-{k}"][0] == -signal.SIGKILL
    assert "Resuming at iteration 4" in ok(results, f"resumed-{mode}-{k}")

    assert_same_arrays(whole / "adapters.safetensors", broken / "adapters.safetensors")
    final = f"checkpoints/step_{ITERS:09d}/optimizer.safetensors"
    assert_same_arrays(whole / final, broken / final)
    rates = read_scalars(broken / "tensorboard")
    assert rates == expected_rates(ITERS // k) == read_scalars(whole / "tensorboard")
    assert {"train/loss", "val/loss"} <= tags(whole / "tensorboard")
    if mode != "sft":  # the metrics particular to each mode are logged too
        assert len(tags(whole / "tensorboard")) > 10
    for tag in tags(whole / "tensorboard") - TIMINGS:
        points = read_scalars(broken / "tensorboard", tag)
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), tag  # no duplicates after the resume
        assert points == read_scalars(whole / "tensorboard", tag), tag


def test_sigterm_stops_with_a_checkpoint_and_resumes_exactly(runs):
    root, results = runs
    code, out = results["termed"]
    assert code == 143, out[-3000:]
    stopped = re.search(r"Stopped by SIGTERM after iteration (\d+) \(checkpoint (\S+)\)", out)
    assert stopped, out[-3000:]
    at = int(stopped[1])
    # At once after a report: stops between checkpoints are tested in test_exact_trainers.py.
    assert at in (4, 6) and Path(stopped[2]).name == f"step_{at:09d}"
    assert "Continue with: mlx-sched lm-lora" in out and "--resume" in out
    assert f"Resuming at iteration {at}" in ok(results, "resumed-termed")
    whole, termed = root / "whole-sft-2", root / "termed"
    assert_same_arrays(whole / "adapters.safetensors", termed / "adapters.safetensors")
    assert read_scalars(termed / "tensorboard") == read_scalars(whole / "tensorboard")
    for tag in ("train/loss", "val/loss"):
        assert read_scalars(termed / "tensorboard", tag) == read_scalars(whole / "tensorboard", tag)


@pytest.mark.parametrize("mode", ["sft", "dpo"])
def test_without_lr_schedule_trains_like_mlx_lm_lora_train(runs, mode):
    root, results = runs
    ok(results, f"plain-{mode}")
    ok(results, f"theirs-{mode}")
    ours, theirs = root / f"plain-{mode}", root / f"theirs-{mode}"
    for name in ("adapters.safetensors", f"{SAVE_EVERY:07d}_adapters.safetensors"):
        assert_same_arrays(theirs / name, ours / name)
    assert read_scalars(ours / "tensorboard") == [
        (s, float(np.float32(1e-3))) for s in range(1, ITERS + 1)
    ]


@pytest.mark.parametrize("mode", OTHERS)
def test_other_modes_follow_the_schedule_at_every_update(runs, mode):
    root, results = runs
    ok(results, f"other-{mode}")
    log_dir = root / f"other-{mode}" / "tensorboard"
    assert read_scalars(log_dir) == expected_rates(2)
    assert "train/loss" in tags(log_dir) and "val/loss" in tags(log_dir)
