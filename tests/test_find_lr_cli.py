"""``mlx-sched find-lr`` on the real trainers (mlx-lm, mlx-lm-lora sft and dpo, mlx-vlm) and
the tiny models: outputs read back, the stop, the suggestion, and training at it.

Every run is a real subprocess; the independent ones run two at a time.
"""

import json
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import read_scalars

from mlx_sched_callbacks.cli import main as cli_main
from mlx_sched_callbacks.lr_find import suggested_schedule

pytest.importorskip("mlx_lm_lora")
pytest.importorskip("mlx_vlm")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lm_lora_run import build as build_lm_lora  # noqa: E402
from lm_lora_run import flags as lm_lora_flags  # noqa: E402

from mlx_sched_callbacks.tiny import build_tiny_vlm, build_tiny_vlm_dataset  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ITERS = 24  # the config's iters: the printed schedule's length, and the comparison runs'
# The tiny models' losses are bounded (a random model starts near log(vocab)): a high rate
# makes them rise by a fifth or so, not by 4x, so the tests stop at 1.03x the best smoothed
# loss (the debiased average lags by tens of updates: the ramp goes on far past 1).
DIVERGENCE, STEPS = 1.03, 40
RANGES = {"dpo": (1e-7, 1e2)}  # DPO's loss starts at log 2 and falls at lower rates
TEST = ["--num-steps", STEPS, "--divergence", DIVERGENCE]


def mlx_sched(*argv):
    return [sys.executable, "-m", "mlx_sched_callbacks", *map(str, argv)]


def trainer_flags(root: Path, case: str, adapters: Path) -> tuple[str, list]:
    """The trainer command and its flags, as a user would give them, for a short run."""
    if case == "lora":
        return "lora", [
            "--model", root / "model", "--data", root / "data" / "sft", "--train",
            "--num-layers", "2", "--batch-size", "4", "--grad-accumulation-steps", "2",
            "--iters", ITERS, "--steps-per-report", "4", "--adapter-path", adapters,
            "--seed", "0",
        ]  # fmt: skip
    if case in ("sft", "dpo"):
        argv = lm_lora_flags(root, case, adapters, ITERS, steps_per_report=4)
        return "lm-lora", argv
    return "vlm", [
        "--model", root / "vlm_model", "--data", root / "vlm_data", "--output-path", adapters,
        "--batch-size", "2", "--iters", ITERS, "--steps-per-report", "4", "--seed", "5",
        "--learning-rate", "1e-3",
    ]  # fmt: skip


CASES = ["lora", "sft", "dpo", "vlm"]


def run(argv):
    done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("find_lr")
    build_lm_lora(root)
    build_tiny_vlm(root / "vlm_model")
    build_tiny_vlm_dataset(root / "vlm_data")
    return root


@pytest.fixture(scope="module")
def found(root):
    """One find-lr per case (and the lora one again, for determinism), side by side."""
    jobs = {}
    for case in [*CASES, "lora-again"]:
        trainer, argv = trainer_flags(root, case.removesuffix("-again"), root / "runs" / case)
        out = root / "found" / case
        low, high = RANGES.get(case, (1e-4, 1e4))
        jobs[case] = mlx_sched(
            "find-lr", trainer, *TEST, "--min-lr", low, "--max-lr", high, "--out", out, *argv
        )
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(jobs, pool.map(run, jobs.values())))
    for case, (code, output) in done.items():
        assert code == 0, f"{case}:\n{output[-3000:]}"
    return {case: (root / "found" / case, output) for case, (_, output) in done.items()}


@pytest.mark.parametrize("case", CASES)
def test_every_output_is_written_and_the_test_stops_where_it_diverges(root, found, case):
    out, printed = found[case]
    saved = json.loads((out / "lr_find.json").read_text())
    n = saved["updates"]
    assert saved["stopped_early"] and saved["reason"] == "diverged" and 10 < n < STEPS, printed
    smoothed = np.array(saved["smoothed_loss"])
    assert smoothed[-1] > DIVERGENCE * smoothed[:-1].min()
    assert all(smoothed[i] <= DIVERGENCE * smoothed[:i].min() for i in range(1, n - 1))
    rates = np.array(saved["rate"])
    low, high = RANGES.get(case, (1e-4, 1e4))
    ramp = low * (high / low) ** (np.arange(n) / (STEPS - 1))
    np.testing.assert_allclose(rates, ramp, rtol=1e-12)
    assert (out / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    # x = the optimizer update (lora accumulates 2 iterations per update).
    points = read_scalars(out / "tensorboard", "lr_find/rate")
    assert points == [(i + 1, float(np.float32(r))) for i, r in enumerate(rates)]
    losses = read_scalars(out / "tensorboard", "lr_find/loss")
    assert [v for _, v in losses] == [float(np.float32(v)) for v in saved["loss"]]
    # Nothing of a training run was written: no adapter folder, no scratch left.
    assert not (root / "runs" / case).exists()
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png", "tensorboard"]
    for name in ("valley", "steep", "minimum"):
        assert re.search(rf"^  {name} ", printed, re.M)
    assert re.search(r"^  valley .*<- chosen", printed, re.M)
    assert f"Results in {out}" in printed


@pytest.mark.parametrize("case", CASES)
def test_the_suggested_peak_lies_where_the_smoothed_loss_was_falling(found, case):
    out, printed = found[case]
    saved = json.loads((out / "lr_find.json").read_text())
    valley = saved["suggestions"]["valley"]
    assert saved["suggested_rate"] == valley["rate"] == saved["rate"][valley["index"]]
    smoothed, rates = np.array(saved["smoothed_loss"]), np.array(saved["rate"])
    # The rules read updates skip + 1 .. n - 5; the valley lies on the way down to the
    # lowest point there (fastai's rule walks a decreasing subsequence: a bump may sit on it).
    skip = STEPS // 10
    lowest = skip + int(np.argmin(smoothed[skip : len(rates) - 5]))
    assert skip <= valley["index"] < lowest
    assert smoothed[lowest] < smoothed[valley["index"]] < smoothed[skip]
    # The printed block is the schedule over the config's iters, peaking there.
    block = printed[printed.index("lr_schedule:") :].split("\n\n")[0]
    assert yaml.safe_load(block)["lr_schedule"] == suggested_schedule(valley["rate"], ITERS)


def test_two_runs_with_a_seed_write_the_same_json(found):
    first, second = (found[case][0] / "lr_find.json" for case in ("lora", "lora-again"))
    assert first.read_bytes() == second.read_bytes()


def final_loss(log_dir) -> float:
    points = read_scalars(log_dir, "train/loss")
    assert points
    return float(np.mean([v for _, v in points[-2:]]))


@pytest.mark.parametrize("case", CASES)
def test_training_at_the_suggested_schedule_beats_training_at_max_lr(root, found, case, tmp_path):
    out, printed = found[case]
    block = printed[printed.index("lr_schedule:") :].split("\n\n")[0]
    (tmp_path / "sched.yaml").write_text(block)
    jobs = {}
    max_lr = RANGES.get(case, (0, 1e4))[1]
    for name, extra in [("suggested", ["--config", tmp_path / "sched.yaml"]),
                        ("max_lr", ["--learning-rate", max_lr])]:  # fmt: skip
        trainer, argv = trainer_flags(root, case, tmp_path / name)
        jobs[name] = mlx_sched(trainer, *argv, *extra, "--log-dir", tmp_path / name / "tb")
    with ThreadPoolExecutor(2) as pool:
        done = dict(zip(jobs, pool.map(run, jobs.values())))
    for name, (code, output) in done.items():
        assert code == 0, f"{name}:\n{output[-3000:]}"
    suggested, at_max = (final_loss(tmp_path / name / "tb") for name in jobs)
    first = read_scalars(tmp_path / "suggested" / "tb", "train/loss")[0][1]
    assert suggested < first and suggested < at_max, (first, suggested, at_max)


def test_ctrl_c_stops_politely_and_still_writes_what_was_measured(root, tmp_path):
    trainer, argv = trainer_flags(root, "lora", tmp_path / "adapters")
    out = tmp_path / "found"
    command = mlx_sched("find-lr", trainer, "--num-steps", "400", "--out", out, *argv)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=ENV)
    for line in process.stdout:
        # mlx-lm's report lines: the iteration, then the loss with its arrow
        match = re.match(r"\s*(\d+)\s+\d+\.\d+ [▲▼]", re.sub(r"\x1b\[[\d;]*m", "", line))
        if match and int(match[1]) >= 10:
            process.send_signal(signal.SIGINT)
            break
    rest = process.stdout.read()
    assert process.wait(timeout=120) == 130, rest
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["reason"] == "signal" and saved["detail"].startswith("SIGINT during update")
    assert 5 <= saved["updates"] < 400 and len(saved["loss"]) == saved["updates"]
    assert (out / "tensorboard").is_dir() and "Results in" in rest


def one_line_error(argv, capsys):
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("mlx-sched find-lr: error: ")
    return err


def test_bad_settings_are_one_line_naming_the_flag(root, tmp_path, capsys):
    _, argv = trainer_flags(root, "lora", tmp_path / "adapters")
    argv = [str(a) for a in argv]
    err = one_line_error(["find-lr", "lora", "--min-lr", "1", "--max-lr", "0.1", *argv], capsys)
    assert "--min-lr must be below --max-lr, got --min-lr 1.0 and --max-lr 0.1" in err
    err = one_line_error(["find-lr", "lora", "--num-steps", "5", *argv], capsys)
    assert "--num-steps must be an integer >= 10, got --num-steps 5" in err
    err = one_line_error(["find-lr", "lorra", *argv], capsys)
    assert "TRAINER: expected one of lora, lm-lora, vlm, got 'lorra'" in err
    assert not (tmp_path / "adapters").exists() and not (tmp_path / "lr_find").exists()


def test_a_config_without_training_data_is_one_line_naming_it(root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "valid.jsonl").write_text('{"text": "a"}\n')
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"model": str(root / "model"), "data": str(empty)}))
    for trainer in ("lora", "lm-lora"):
        err = one_line_error(["find-lr", trainer, "--config", str(config), "--train"], capsys)
        assert f"data: {empty} in --config {config}: no training data" in err
    err = one_line_error(
        ["find-lr", "lora", "--out", str(tmp_path / "a"), "--adapter-path", str(tmp_path / "a"),
         "--model", str(root / "model"), "--data", str(root / "data" / "sft")], capsys,
    )  # fmt: skip
    assert f"--out {tmp_path / 'a'}: that is the adapter folder (--adapter-path)" in err
