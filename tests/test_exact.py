"""Exact by carrying state: any stop, on or off the save grid, resumes to the same bytes.

mlx-lm's real train() with LoRA dropout (so mlx's random key matters at every step),
gradient accumulation 2, reports every 4 iterations and checkpoints every 10 (off that
grid), stopped by SIGTERM, SIGINT or
SIGKILL at chosen iterations between checkpoints and on them, then resumed: every
file a checkpoint or the trainer writes is byte-identical to an uninterrupted run's,
and TensorBoard's points are the same step for step. More stops at random iterations
run with ``MLX_SCHED_STOPS=N``.

Also here: a refused command leaves the run folder as it was, extending a finished
run is exact or refused, and the checkpoint files' bytes do not depend on a resume.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import pytest
import yaml
from conftest import read_scalars
from mlx.utils import tree_flatten
from test_bad_checkpoints import small_filesystem  # noqa: F401 - a fixture
from test_lm import tiny  # noqa: F401 - a fixture

from mlx_sched_callbacks.run.checkpoint import load_optimizer_state, save_optimizer_state

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
ITERS, K, REPORT, SAVE = 40, 2, 4, 10
RUN = ["--iters", ITERS, "--grad-accumulation-steps", K, "--steps-per-report", REPORT,
       "--save-every", SAVE, "--dropout", "0.1"]  # fmt: skip
# (signal, the iteration whose batch it comes before): off the save grid and on it,
# inside an accumulation group and at its end, off the report grid and on it.
STOPS = [("TERM", 27), ("INT", 14), ("KILL", 33), ("TERM", 22), ("INT", 31), ("KILL", 11)]
CODES = {"TERM": 128 + signal.SIGTERM, "INT": 128 + signal.SIGINT, "KILL": -signal.SIGKILL}


def lm_run(tiny, out, *extra):  # noqa: F811
    model, data = tiny
    return [sys.executable, str(HERE / "lm_run.py"), "--model", str(model), "--data",
            str(data), "--out", str(out), *map(str, RUN), *map(str, extra)]  # fmt: skip


def run(command):
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    return done.returncode, done.stdout + done.stderr


def digests(folder: Path) -> dict:
    """sha256 of every file a run writes besides its event files, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "tensorboard" not in path.parts and path.name != "reports.json"
    }


def assert_same_files(out: Path, whole: Path):
    ours, theirs = digests(out), digests(whole)
    outside = [p for p in theirs if not p.startswith("checkpoints/")]
    assert outside == [p for p in ours if not p.startswith("checkpoints/")]
    # Both keep their newest checkpoints; a polite stop adds one the other never wrote.
    common = sorted(set(ours) & set(theirs))
    assert sum(p.endswith("/trainer.json") for p in common) >= 2
    for path in outside + common:
        assert ours[path] == theirs[path], path


def report_iterations(out: Path) -> list[int]:
    return [r["iteration"] for r in json.loads((out / "reports.json").read_text())]


def assert_same_curves(out: Path, whole: Path, stopped_at: int):
    """Rates point for point; every loss but that of the window the stop cut; tokens at every
    point of the uninterrupted run. The cut window adds one point of its own, at the stop."""
    assert read_scalars(out / "tensorboard") == read_scalars(whole / "tensorboard")
    reports = report_iterations(whole)
    cut = [r for before, r in zip([0, *reports], reports) if before < stopped_at < r]
    for tag in ("train/loss", "train/trained_tokens", "val/loss"):
        ours, theirs = (
            dict(read_scalars(out / "tensorboard", tag)),
            read_scalars(whole / "tensorboard", tag),
        )
        assert theirs, tag
        for step, value in theirs:
            if tag != "train/loss" or step not in [-(-r // K) for r in cut]:
                assert ours.get(step) == value, f"{tag} at step {step}"
        extra = set(ours) - {step for step, _ in theirs}
        assert extra <= ({-(-stopped_at // K)} if cut else set()), (tag, extra)


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("exact") / "whole"
    code, said = run(lm_run(tiny, out))
    assert code == 0, said[-3000:]
    return out


def check_stop(tiny, whole, out, how, at):  # noqa: F811
    """Stop before iteration ``at`` with ``how``, resume, and compare with ``whole``."""
    code, said = run(lm_run(tiny, out, "--stop-at", at, "--stop-with", how))
    assert code == CODES[how], said[-3000:]
    if how != "KILL":
        # Right away after a report, else at the end of the group under way, reported.
        done = at - 1
        stopped_at = (
            done if done % K == 0 and done in report_iterations(whole) else (-(-at // K) * K)
        )
        assert f"after iteration {stopped_at} (checkpoint " in said, said[-2000:]
    code, said = run(lm_run(tiny, out, "--resume"))
    assert code == 0, said[-3000:]
    start = int(said.split("resumed at ")[1].split()[0])
    if how != "KILL":
        assert start == stopped_at
    assert_same_files(out, whole)
    assert_same_curves(out, whole, start)
    # The chained callback (and the console) see the reports of the uninterrupted run.
    assert report_iterations(out) == [r for r in report_iterations(whole) if r > start]
    return start


@pytest.mark.parametrize("how,at", STOPS, ids=[f"{h}-{a}" for h, a in STOPS])
def test_a_stop_anywhere_resumes_to_the_same_bytes(tiny, whole, tmp_path, how, at):  # noqa: F811
    check_stop(tiny, whole, tmp_path / "stopped", how, at)


@pytest.mark.skipif(not os.environ.get("MLX_SCHED_STOPS"), reason="set MLX_SCHED_STOPS=N")
def test_random_stops_resume_to_the_same_bytes(tiny, whole, tmp_path):  # noqa: F811
    rng = random.Random(int(os.environ.get("MLX_SCHED_SEED", "0")))
    cases = [(rng.choice(list(CODES)), rng.randrange(2, ITERS))
             for _ in range(int(os.environ["MLX_SCHED_STOPS"]))]  # fmt: skip
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda c: check_stop(tiny, whole, tmp_path / f"s{c[0]}", *c[1]),
                      enumerate(cases)))  # fmt: skip
    print(f"{len(cases)} stops, all exact: {cases}")


def test_a_cut_report_window_keeps_every_token(tiny, whole, tmp_path):  # noqa: F811
    # SIGTERM before 27: the group 27..28 ends the run, and the trainer reports 25..28 there;
    # the resumed run reports 29..30 at 30, then every point as the uninterrupted run does.
    start = check_stop(tiny, whole, tmp_path / "cut", "TERM", 27)
    assert start == 28
    tokens = dict(read_scalars(tmp_path / "cut/tensorboard", "train/trained_tokens"))
    whole_tokens = dict(read_scalars(whole / "tensorboard", "train/trained_tokens"))
    assert set(tokens) == set(whole_tokens) | {14}
    assert whole_tokens[12] < tokens[14] < whole_tokens[15]


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def lora(config, *extra):
    command = [sys.executable, "-m", "mlx_sched_callbacks", "lora", "--config", str(config)]
    return run([*command, *map(str, extra)])


def lora_config(path, tiny, adapter_path, **extra):  # noqa: F811
    model, data = tiny
    config = {
        "model": str(model), "data": str(data), "train": True, "num_layers": 2,
        "batch_size": 4, "iters": 29, "val_batches": 2, "steps_per_eval": 10,
        "steps_per_report": 5, "save_every": 10, "adapter_path": str(adapter_path),
        "learning_rate": 1e-3, "seed": 3, "grad_accumulation_steps": K,
        "lora_parameters": {"rank": 8, "dropout": 0.1, "scale": 20.0}, **extra,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


REFUSALS = {
    "another model shape": ["--resume", "--num-layers", "1"],
    "another learning rate": ["--resume", "--learning-rate", "2e-3"],
    "another batch size": ["--resume", "--batch-size", "2"],
    "an extension from inside a group": ["--resume", "--iters", "37"],
}


def test_a_refused_command_leaves_the_run_folder_as_it_was(tiny, tmp_path):  # noqa: F811
    config = lora_config(tmp_path / "c.yaml", tiny, tmp_path / "run")
    code, said = lora(config)
    assert code == 0, said[-3000:]
    before = snapshot(tmp_path / "run")
    assert "adapter_config.json" in before and "0000020_adapters.safetensors" in before
    for name, flags in REFUSALS.items():
        code, said = lora(config, *flags)
        errors = [line for line in said.splitlines() if line.startswith("mlx-sched lora: error")]
        assert code == 2 and len(errors) == 1, f"{name}: {said[-2000:]}"
        assert "Traceback" not in said, name
        assert snapshot(tmp_path / "run") == before, name


def test_extending_a_run_that_ended_inside_a_group_is_refused_and_says_why(tiny, tmp_path):  # noqa: F811
    config = lora_config(tmp_path / "c.yaml", tiny, tmp_path / "run")
    assert lora(config)[0] == 0
    code, said = lora(config, "--resume", "--iters", "37")
    assert code == 2
    assert "ended at iteration 29, inside an accumulation group of 2" in said
    assert "train iters=37 from the start" in said


def test_extending_a_run_that_ended_on_an_update_is_exact(tiny, tmp_path):  # noqa: F811
    short = lora_config(tmp_path / "short.yaml", tiny, tmp_path / "extended", iters=20)
    assert lora(short)[0] == 0
    code, said = lora(short, "--resume", "--iters", "30")
    assert code == 0, said[-3000:]
    whole = lora_config(tmp_path / "whole.yaml", tiny, tmp_path / "whole", iters=30)
    assert lora(whole)[0] == 0
    extended, uninterrupted = digests(tmp_path / "extended"), digests(tmp_path / "whole")
    for name in ("adapters.safetensors", "0000030_adapters.safetensors",
                 "checkpoints/step_000000030/optimizer.safetensors"):  # fmt: skip
        assert extended[name] == uninterrupted[name], name
    # and a later resume finds its checkpoints sound (no fresh start)
    code, said = lora(short, "--resume", "--iters", "30")
    assert code == 0 and "Resuming at iteration 30" in said, said[-2000:]


def test_a_read_only_checkpoint_folder_is_refused_before_loading(tiny, tmp_path, small_filesystem):  # noqa: F811, E501
    config = lora_config(tmp_path / "c.yaml", tiny, tmp_path / "run")
    assert lora(config)[0] == 0
    checkpoints = tmp_path / "run/checkpoints"
    os.rename(checkpoints, tmp_path / "kept")
    os.symlink(small_filesystem("size=64k,ro"), checkpoints)
    code, said = lora(config, "--resume")
    assert code == 2 and "Traceback" not in said, said[-2000:]
    assert f"cannot write in checkpoint folder {checkpoints}: Read-only file system" in said
    assert "Loading pretrained model" not in said


def test_a_restored_optimizer_saves_the_same_bytes(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model.layers[0].freeze()  # an empty subtree, as a LoRA model has
    optimizer = optim.AdamW(learning_rate=0.1)
    optimizer.init(model.trainable_parameters())
    grads = mx.grad(lambda p: sum(v.sum() for _, v in tree_flatten(p)))(
        model.trainable_parameters()
    )
    optimizer.update(model, grads)
    mx.eval(optimizer.state)
    save_optimizer_state(optimizer, tmp_path / "a.safetensors")
    restored = optim.AdamW(learning_rate=0.1)
    load_optimizer_state(restored, tmp_path / "a.safetensors", model.trainable_parameters())
    save_optimizer_state(restored, tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert list(restored.state) == list(optimizer.state)
