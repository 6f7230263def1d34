"""mlx-vlm's real engine: per-update rates, the leftover group, kill + exact resume, the CLI."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from conftest import read_scalars

pytest.importorskip("mlx_vlm")

from mlx_sched_callbacks import schedules  # noqa: E402
from mlx_sched_callbacks.tiny import build_tiny_vlm, build_tiny_vlm_dataset  # noqa: E402

HERE = Path(__file__).resolve().parent
VLM_RUN = HERE / "vlm_run.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vlm")
    return build_tiny_vlm(root / "model"), build_tiny_vlm_dataset(root / "data")


def assert_same_arrays(path_a, path_b):
    a, b = mx.load(str(path_a)), mx.load(str(path_b))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)


def assert_same_run(out, reference, last):
    """Adapters, optimizer state and every TensorBoard point the same; one loss point per step."""
    assert_same_arrays(out / "adapters.safetensors", reference / "adapters.safetensors")
    state = f"checkpoints/step_{last:09d}/optimizer.safetensors"
    assert_same_arrays(out / state, reference / state)
    for tag in ("train/learning_rate", "train/loss", "train/trained_tokens", "val/loss"):
        points = read_scalars(out / "tensorboard", tag)
        steps = [s for s, _ in points]
        assert points and len(steps) == len(set(steps)) and steps == sorted(steps), tag
        assert points == read_scalars(reference / "tensorboard", tag), tag


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    """9 iterations, k=2 (the 9th is a leftover group), validation, LoRA dropout 0.1."""
    out = tmp_path_factory.mktemp("vlm") / "whole"
    subprocess.run(vlm_run(tiny, out), check=True, capture_output=True, env=ENV)
    return out


def vlm_run(tiny, out, *extra):
    model, data = tiny
    return [sys.executable, str(VLM_RUN), "--model", str(model), "--data", str(data),
            "--out", str(out), *extra]  # fmt: skip


def test_rates_follow_the_schedule_with_the_leftover_group(whole):
    sys.path.insert(0, str(HERE))
    from vlm_run import SCHEDULE  # noqa: E402

    # 9 iterations with k=2: updates after 2, 4, 6, 8, and the leftover group after 9.
    expected = [(u + 1, float(np.float32(SCHEDULE(u)))) for u in range(5)]
    assert read_scalars(whole / "tensorboard") == expected
    reports = json.loads((whole / "reports.json").read_text())
    assert [r["iteration"] for r in reports] == [2, 4, 6, 8, 9]
    assert [r["learning_rate"] for r in reports] == [v for _, v in expected]
    state = mx.load(str(whole / "checkpoints/step_000000009/optimizer.safetensors"))
    assert state["step"].item() == 5
    assert [s for s, _ in read_scalars(whole / "tensorboard", "val/loss")] == [1, 2, 4, 5]


def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(tiny, whole, tmp_path):
    out = tmp_path / "killed"
    killed = subprocess.run(vlm_run(tiny, out, "--kill-at", "6"), capture_output=True, env=ENV)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000000004"]
    resumed = subprocess.run(
        vlm_run(tiny, out, "--resume"), check=True, capture_output=True, text=True, env=ENV
    )
    assert "resumed at 4" in resumed.stdout
    assert_same_run(out, whole, last=9)
    for name in ("0000004_adapters.safetensors", "0000008_adapters.safetensors"):
        assert_same_arrays(out / name, whole / name)
    # The chained callback saw global iterations after the resume.
    reports = json.loads((out / "reports.json").read_text())
    assert [r["iteration"] for r in reports] == [6, 8, 9]


# One CLI run: the flags python -m mlx_vlm.train takes as they are.
CLI_FLAGS = [
    "--iters", "41", "--batch-size", "2", "--gradient-accumulation-steps", "2",
    "--steps-per-report", "2", "--steps-per-eval", "10", "--val-batches", "2",
    "--steps-per-save", "20", "--optimizer", "adamw", "--learning-rate", "1e-3",
    "--weight-decay", "0.01", "--lora-rank", "4", "--seed", "5",
]  # fmt: skip


def cli(tiny, out, *extra, module="mlx_sched_callbacks.cli.vlm"):
    model, data = tiny
    return [sys.executable, "-m", module, "--model", str(model), "--data", str(data),
            "--output-path", str(out), *CLI_FLAGS, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def cli_whole(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("vlm_cli") / "ours"
    subprocess.run(cli(tiny, out), check=True, capture_output=True, env=ENV)
    return out


def test_cli_trains_exactly_like_mlx_vlm_train(tiny, tmp_path):
    # With LoRA dropout: mlx's random state is seeded as mlx-vlm seeds it. (Every
    # checkpoint reseeds it, so this run has one only at its end.)
    dropout = ["--lora-dropout", "0.1", "--steps-per-save", "42"]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    subprocess.run(cli(tiny, ours, *dropout), check=True, capture_output=True, env=ENV)
    subprocess.run(
        cli(tiny, theirs, *dropout, module="mlx_vlm.train"), check=True, capture_output=True
    )
    for name in ("adapters.safetensors", "adapter_config.json"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    # 21 updates (the last a leftover group), each at --learning-rate.
    rates = read_scalars(ours / "tensorboard")
    assert rates == [(s, float(np.float32(1e-3))) for s in range(1, 22)]


def test_cli_sigterm_stops_with_a_checkpoint_and_resumes_exactly(tiny, cli_whole, tmp_path):
    out = tmp_path / "stopped"
    process = subprocess.Popen(cli(tiny, out), stdout=subprocess.PIPE, text=True, env=ENV)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Training (iteration 6)"):
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    stop = re.search(
        r"Stopped by SIGTERM after iteration (\d+) \(checkpoint (\S+)\)", "".join(lines)
    )
    assert stop, "".join(lines[-5:])
    iteration, checkpoint = int(stop[1]), Path(stop[2])
    assert 6 <= iteration < 20 and iteration % 2 == 0  # between checkpoints, at an update
    assert checkpoint == out / f"checkpoints/step_{iteration:09d}" and checkpoint.is_dir()
    continue_with = [line for line in lines if "--resume" in line]
    assert continue_with and "mlx-sched vlm --model" in continue_with[0]

    resumed = subprocess.run(
        cli(tiny, out, "--resume"), check=True, capture_output=True, text=True, env=ENV
    )
    assert f"Resuming at iteration {iteration}" in resumed.stdout
    assert f"Training (iteration {iteration + 2})" in resumed.stdout  # numbered globally
    assert_same_run(out, cli_whole, last=41)
    for name in ("0000020_adapters.safetensors", "0000040_adapters.safetensors"):
        assert_same_arrays(out / name, cli_whole / name)


def test_cli_takes_lr_schedule_from_its_config_file(tiny, tmp_path):
    model, data = tiny
    lr_schedule = {"name": "cosine_decay", "arguments": [1e-3, 4, 1e-5], "warmup": 2}
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump({"model": str(model), "iters": 12, "lr_schedule": lr_schedule})
    )
    subprocess.run(
        [sys.executable, "-m", "mlx_sched_callbacks.cli.vlm", "-c", str(config),
         "--data", str(data),
         "--batch-size", "2", "--gradient-accumulation-steps", "2", "--steps-per-save", "12",
         "--output-path", str(tmp_path / "out")],
        check=True, capture_output=True, env=ENV,
    )  # fmt: skip
    schedule = schedules.from_mlx_lm_config(lr_schedule)
    rates = read_scalars(tmp_path / "out/tensorboard")
    assert rates == [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 7)]
