"""The best adapter, early stopping, gradient norms and clipping through mlx-sched lm-lora and
mlx-sched vlm: the same core, the real trainers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_scalars
from test_run_callbacks import expected_stop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ITERS = 16
OURS = ["--early-stopping-patience", "1", "--max-grad-norm", "0.5"]


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise AssertionError(result.stdout[-2000:] + result.stderr[-3000:])
    return result


def check_run(out: Path, log: Path, result) -> None:
    validations = read_scalars(log, "val/loss")
    stop, (best_iteration, best_loss) = expected_stop(validations, 1)
    best = json.loads((out / "best_adapters.json").read_text())
    assert best == {"iteration": best_iteration, "val_loss": pytest.approx(best_loss, rel=1e-7)}
    assert (out / "best_adapters.safetensors").stat().st_size > 0
    last = max(s for s, _ in read_scalars(log))
    if stop is None:
        assert last == ITERS
    else:
        assert f"Early stopping at iteration {stop}" in result.stdout + result.stderr
        assert last == stop  # k = 1, a report every iteration: it stops at once
    norms = read_scalars(log, "train/grad_norm")
    assert [s for s, _ in norms] == list(range(1, last + 1))
    assert all(v > 0 for _, v in norms)
    assert read_scalars(log, "val/best_loss")[-1][1] == pytest.approx(best_loss, rel=1e-7)


@pytest.mark.parametrize("mode", ["sft", "dpo"])
def test_lm_lora(tmp_path, mode):
    pytest.importorskip("mlx_lm_lora")
    import lm_lora_run

    lm_lora_run.build(tmp_path)
    out = tmp_path / "out"
    flags = lm_lora_run.flags(tmp_path, mode, out, ITERS, steps_per_eval=2, learning_rate=0.05)
    result = run([sys.executable, str(HERE / "lm_lora_run.py"), "ours", *flags, *OURS])
    check_run(out, out / "tensorboard", result)


def test_vlm_sft(tmp_path):
    pytest.importorskip("mlx_vlm")
    from mlx_sched_callbacks.tiny import build_tiny_vlm, build_tiny_vlm_dataset

    model, data = build_tiny_vlm(tmp_path / "model"), build_tiny_vlm_dataset(tmp_path / "data")
    out = tmp_path / "out"
    flags = ["--model", model, "--data", data, "--iters", ITERS, "--batch-size", 2,
             "--steps-per-report", 1, "--steps-per-eval", 2, "--val-batches", 1,
             "--steps-per-save", 4, "--learning-rate", 0.05, "--lora-rank", 4, "--seed", 5,
             "--output-path", out, *OURS]  # fmt: skip
    result = run([sys.executable, str(HERE / "vlm_run.py"), "cli", *map(str, flags)])
    check_run(out, out / "tensorboard", result)


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--early-stopping-patience", "-1", "expected a whole number >= 1, got '-1'"),
        ("--early-stopping-patience", "2.5", "expected a whole number >= 1, got '2.5'"),
        ("--early-stopping-threshold", "nan", "expected a finite number >= 0, got 'nan'"),
        ("--max-grad-norm", "0", "expected a finite number > 0, got '0'"),
        ("--max-skipped-updates", "-3", "expected a whole number >= 0, got '-3'"),
    ],
)
def test_bad_values_are_one_line_naming_the_flag(tmp_path, flag, value, expected):
    result = subprocess.run(
        [sys.executable, "-m", "mlx_sched_callbacks", "lora", "--model", "m", "--train",
         "--adapter-path", str(tmp_path / "a"), flag, value],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mlx-sched lora: error: argument {flag}: {expected}"
    ]
    assert not (tmp_path / "a").exists()
