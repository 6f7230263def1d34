"""mlx-lm's real train(): per-step rates, gradient accumulation, kill + exact resume, the CLI."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import yaml
from conftest import read_scalars
from mlx_lm.tuner.utils import build_schedule

from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

HERE = Path(__file__).resolve().parent
LM_RUN = HERE / "lm_run.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_dataset(root / "data")


def lm_run(tiny, out, *extra):
    model, data = tiny
    return [sys.executable, str(LM_RUN), "--model", str(model), "--data", str(data),
            "--out", str(out), *extra]  # fmt: skip


def run_until(command, marker):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.strip() == marker:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=120)
    process.stdout.close()
    return process.returncode


def assert_same_arrays(path_a, path_b):
    a, b = mx.load(str(path_a)), mx.load(str(path_b))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)


def test_kill_at_47_and_resume_is_bit_identical(tiny, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(lm_run(tiny, whole), check=True, capture_output=True)

    assert run_until(lm_run(tiny, broken), "iteration 47") == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (broken / "checkpoints").iterdir())
    assert checkpoints == ["step_000000020", "step_000000040"]
    resumed = subprocess.run(
        lm_run(tiny, broken, "--resume"), check=True, capture_output=True, text=True
    )
    assert "resumed at 40" in resumed.stdout

    assert_same_arrays(whole / "adapters.safetensors", broken / "adapters.safetensors")
    assert_same_arrays(
        whole / "checkpoints/step_000000060/optimizer.safetensors",
        broken / "checkpoints/step_000000060/optimizer.safetensors",
    )
    rates = read_scalars(broken / "tensorboard")
    assert [s for s, _ in rates] == list(range(1, 61))
    assert rates == read_scalars(whole / "tensorboard")
    for tag in ("train/loss", "val/loss", "train/trained_tokens"):
        points = read_scalars(broken / "tensorboard", tag)
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)) and steps == sorted(steps), tag
        assert points == read_scalars(whole / "tensorboard", tag), tag
    # The chained callback saw global iterations after the resume.
    reports = json.loads((broken / "reports.json").read_text())
    assert [r["iteration"] for r in reports] == list(range(41, 61))


def test_rates_follow_the_schedule_under_gradient_accumulation(tiny, tmp_path):
    out = tmp_path / "accumulate"
    subprocess.run(
        lm_run(tiny, out, "--iters", "24", "--save-every", "8", "--grad-accumulation-steps", "4"),
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(HERE))
    from lm_run import SCHEDULE  # noqa: E402

    reports = json.loads((out / "reports.json").read_text())
    assert [r["iteration"] for r in reports] == list(range(1, 25))
    optimizer_steps = []
    for report in reports:
        it = report["iteration"]
        update = (it - 1) // 4  # the update this micro-step contributes to
        optimizer_steps.append(update)
        assert report["learning_rate"] == float(np.float32(SCHEDULE(update))), it
    # ...and the optimizer's own step counter agrees: 6 updates, the last one u = 5.
    state = mx.load(str(out / "checkpoints/step_000000024/optimizer.safetensors"))
    assert state["step"].item() == 6 == optimizer_steps[-1] + 1
    rates = read_scalars(out / "tensorboard")
    assert rates == [(u + 1, float(np.float32(SCHEDULE(u)))) for u in range(6)]


def write_config(path, tiny, adapter_path, **extra):
    model, data = tiny
    config = {
        "model": str(model), "data": str(data), "train": True, "num_layers": 2,
        "batch_size": 4, "iters": 30, "val_batches": 2, "steps_per_eval": 10,
        "steps_per_report": 5, "save_every": 10, "adapter_path": str(adapter_path),
        "learning_rate": 1e-3, "seed": 3, **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *args], check=True, capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_cli_lora_trains_exactly_like_mlx_lm_lora(tiny, tmp_path, dropout):
    # With dropout, mlx's random key matters at every step: the checkpoints every 10
    # iterations must leave it as mlx_lm.lora has it.
    lora = {"lora_parameters": {"rank": 8, "dropout": dropout, "scale": 20.0}}
    ours = write_config(tmp_path / "ours.yaml", tiny, tmp_path / "ours", **lora)
    theirs = write_config(tmp_path / "theirs.yaml", tiny, tmp_path / "theirs", **lora)
    run_cli("-m", "mlx_lm", "lora", "--config", str(theirs))
    run_cli("-m", "mlx_sched_callbacks", "lora", "--config", str(ours))
    for name in [
        "adapters.safetensors",
        *(f"{it:07d}_adapters.safetensors" for it in (10, 20, 30)),
    ]:
        theirs_bytes = (tmp_path / "theirs" / name).read_bytes()
        assert (tmp_path / "ours" / name).read_bytes() == theirs_bytes, name
    rates = read_scalars(tmp_path / "ours/tensorboard")
    assert rates == [(s, float(np.float32(1e-3))) for s in range(1, 31)]
    assert (tmp_path / "ours/checkpoints/step_000000030/trainer.json").exists()


def test_cli_lora_follows_mlx_lm_lr_schedule(tiny, tmp_path):
    lr_schedule = {"name": "cosine_decay", "arguments": [1e-3, 20, 1e-5], "warmup": 5}
    config = write_config(tmp_path / "c.yaml", tiny, tmp_path / "a", lr_schedule=lr_schedule)
    run_cli("-m", "mlx_sched_callbacks", "lora", "--config", str(config))
    mlx_lm_rates = np.array(build_schedule(lr_schedule)(mx.array(np.arange(30))))
    rates = read_scalars(tmp_path / "a/tensorboard")
    assert [s for s, _ in rates] == list(range(1, 31))
    # ours: double rounded once to float32; mlx's: float32 arithmetic, whose rounding
    # errors are on the scale of the peak (1e-3), so the bound is float32 eps at the peak.
    np.testing.assert_allclose([v for _, v in rates], mlx_lm_rates, rtol=0, atol=1e-3 * 2**-23)


def test_cli_lora_takes_our_multi_phase_form_and_resumes(tiny, tmp_path):
    lr_schedule = {
        "name": "join_schedules",
        "schedules": [
            {"name": "linear_schedule", "init": 0.0, "end": 1e-3, "steps": 5},
            {"name": "constant", "value": 1e-3},
            {"name": "cosine_decay", "init": 1e-3, "decay_steps": 10, "end": 0.0},
        ],
        "boundaries": [5, 20],
    }
    config = write_config(tmp_path / "c.yaml", tiny, tmp_path / "a", lr_schedule=lr_schedule)
    first = run_cli("-m", "mlx_sched_callbacks", "lora", "--config", str(config), "--iters", "20")
    assert "See the curves: tensorboard --logdir " in first.stdout
    again = run_cli("-m", "mlx_sched_callbacks", "lora", "--config", str(config), "--resume")
    assert "Resuming at iteration 20" in again.stdout
    rates = read_scalars(tmp_path / "a/tensorboard")
    from mlx_sched_callbacks import schedules

    schedule = schedules.from_dict(lr_schedule)
    assert rates == [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 31)]


def test_cli_help_and_unknown_command():
    out = run_cli("-m", "mlx_sched_callbacks", "--help").stdout
    assert "demo" in out and "lora" in out
    lora_help = run_cli("-m", "mlx_sched_callbacks", "lora", "--help").stdout
    assert "--resume" in lora_help and "--log-dir" in lora_help and "--config" in lora_help
    bad = subprocess.run(
        [sys.executable, "-m", "mlx_sched_callbacks", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
    from mlx_sched_callbacks import __version__

    assert run_cli("-m", "mlx_sched_callbacks", "--version").stdout == f"mlx-sched {__version__}\n"


def test_demo_killed_then_resumed_continues_where_it_stopped(tmp_path):
    out = tmp_path / "demo"
    killed = subprocess.run(
        [sys.executable, "-m", "mlx_sched_callbacks", "demo", "--out", str(out),
         "--iters", "100", "--kill-at", "70"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli("-m", "mlx_sched_callbacks", "demo", "--out", str(out), "--iters", "100",
                      "--resume")  # fmt: skip
    assert "Resuming at iteration 50" in resumed.stdout
    assert f"tensorboard --logdir {out / 'tensorboard'}" in resumed.stdout
    rates = read_scalars(out / "tensorboard")
    assert [s for s, _ in rates] == list(range(1, 101))
    done = run_cli("-m", "mlx_sched_callbacks", "demo", "--out", str(out), "--iters", "100",
                   "--resume")  # fmt: skip
    assert "Resuming at iteration 100" in done.stdout
    assert read_scalars(out / "tensorboard") == rates


def test_resume_without_a_checkpoint_says_it_starts_fresh(tiny, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny, tmp_path / "a", iters=5, save_every=5)
    out = run_cli("-m", "mlx_sched_callbacks", "lora", "--config", str(config), "--resume")
    assert (
        f"No complete checkpoint in {tmp_path / 'a' / 'checkpoints'}; starting at 1" in out.stdout
    )


def test_checkpoints_must_fall_on_update_boundaries(tiny, tmp_path):
    config = write_config(
        tmp_path / "c.yaml", tiny, tmp_path / "a", save_every=10, grad_accumulation_steps=4
    )
    bad = subprocess.run(
        [sys.executable, "-m", "mlx_sched_callbacks", "lora", "--config", str(config)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "steps_per_save must be a multiple of grad_accumulation_steps=4" in bad.stderr
    assert "got 10" in bad.stderr


def test_train_until_then_continue_in_process_is_exact(tiny, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    from lm_run import build

    whole, _ = build(*tiny, tmp_path / "whole", iters=30, save_every=10)
    whole.train()
    parts, _ = build(*tiny, tmp_path / "parts", iters=30, save_every=10)
    parts.train(until=10)
    parts.train(until=25)
    parts.train()
    whole_dir, parts_dir = tmp_path / "whole", tmp_path / "parts"
    assert_same_arrays(whole_dir / "adapters.safetensors", parts_dir / "adapters.safetensors")
    assert read_scalars(parts_dir / "tensorboard") == read_scalars(whole_dir / "tensorboard")
    for tag in ("train/loss", "train/trained_tokens", "val/loss"):
        assert read_scalars(parts_dir / "tensorboard", tag) == read_scalars(
            whole_dir / "tensorboard", tag
        ), tag


def test_a_fresh_start_redoes_the_best_adapter_of_a_run_without_checkpoints(tiny, tmp_path, capsys):
    sys.path.insert(0, str(HERE))
    from lm_run import build

    build(*tiny, tmp_path, iters=20, save_every=10)[0].train(until=2)  # validates at 1
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed before its first checkpoint
    capsys.readouterr()
    build(*tiny, tmp_path, iters=20, save_every=10)[0].train(until=10)
    said = capsys.readouterr().out
    assert "Removed best_adapters.safetensors and best_adapters.json of an earlier run" in said
    assert "Moved" not in said
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000000010"]
    assert (tmp_path / "best_adapters.json").is_file()  # the fresh run's own


def test_a_fresh_run_in_a_used_folder_sets_the_old_checkpoints_aside(tiny, tmp_path, capsys):
    sys.path.insert(0, str(HERE))
    from lm_run import build

    old, _ = build(*tiny, tmp_path, iters=20, save_every=10)
    old.train()
    fresh, _ = build(*tiny, tmp_path, iters=20, save_every=10)
    fresh.train(until=10)  # then "killed": a resume must continue this run, not the old one
    said = capsys.readouterr().out
    assert "Moved 2 checkpoint(s) and 4 adapter file(s) of an earlier run past iteration 0" in said
    (aside,) = (tmp_path / "checkpoints").glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == [
        "0000010_adapters.safetensors", "0000020_adapters.safetensors",
        "best_adapters.json", "best_adapters.safetensors", "step_000000010", "step_000000020",
    ]  # fmt: skip
    # This run's own numbered adapter, and no earlier one, beside its adapters.
    assert sorted(p.name for p in tmp_path.glob("[0-9]*_adapters.safetensors")) == [
        "0000010_adapters.safetensors"
    ]
    for _ in range(4):  # more fresh starts: only the newest 3 set-aside folders stay
        build(*tiny, tmp_path, iters=20, save_every=10)[0].train(until=10)
    assert len(list((tmp_path / "checkpoints").glob("superseded-*"))) == 3
    assert "removed the oldest 1 set aside" in capsys.readouterr().out
    again, _ = build(*tiny, tmp_path, iters=20, save_every=10)
    assert again.resume() == 10
