"""Kill a real training process, resume it, and read the curve back as TensorBoard does."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars, run_until, served_scalars

from mlx_sched_callbacks import LRScheduleCallback
from mlx_sched_callbacks import schedules as S

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_loop.py"


def example(out, *extra):
    return [
        sys.executable,
        str(EXAMPLE),
        "--steps",
        "100",
        "--checkpoint-every",
        "40",
        "--out",
        str(out),
        *extra,
    ]


def test_sigkill_at_55_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(example(whole), check=True, capture_output=True)

    assert run_until(example(broken, "--flush-secs", "0"), "step 55 ") == -signal.SIGKILL
    killed_points = read_scalars(broken / "tensorboard")
    assert killed_points[-1][0] >= 55  # points past the checkpoint exist and must be hidden

    resumed = subprocess.run(
        example(broken, "--resume"), check=True, capture_output=True, text=True
    )
    assert "at step 40" in resumed.stdout

    expected = read_scalars(whole / "tensorboard")
    assert [step for step, _ in expected] == list(range(1, 101))
    assert read_scalars(broken / "tensorboard") == expected
    assert read_scalars(broken / "tensorboard", "train/loss") == read_scalars(
        whole / "tensorboard", "train/loss"
    )
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = mx.load(str(whole / "checkpoints" / "step_000000100" / name))
        b = mx.load(str(broken / "checkpoints" / "step_000000100" / name))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(np.array(a[key]), np.array(b[key]), err_msg=key)


def resumed_log(log_dir):
    """A run checkpointed at 40, crashed at 55 and resumed to 100, in one log_dir."""
    schedule = S.warmup_cosine(0.1, 10, 100)
    optimizer = optim.SGD(learning_rate=0.0)
    first = LRScheduleCallback(schedule, optimizer, log_dir)
    for _ in range(55):
        first.on_step_begin()
        first.on_step_end()
        if first.step == 40:
            state = first.state_dict()
    first.close()
    time.sleep(1.1)  # a later file in wall-clock seconds too, as a real restart would be
    second = LRScheduleCallback(schedule, optimizer, log_dir)
    second.load_state_dict(state)
    for _ in range(60):
        second.on_step_begin()
        second.on_step_end()
    second.close()
    return schedule


@pytest.mark.parametrize("loader", ["fast", "python"])
def test_tensorboard_server_serves_one_clean_curve(tmp_path, loader):
    schedule = resumed_log(tmp_path)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path)]
    if loader == "python":
        command.append("--load_fast=false")
    _, rows = served_scalars(command, want=100, timeout=60)
    steps = [step for _, step, _ in rows]
    values = [value for _, _, value in rows]
    assert steps == list(range(1, 101))
    assert values == [float(np.float32(schedule(s - 1))) for s in steps]


def test_load_optimizer_state_on_a_lora_model_in_a_compiled_custom_loop(tmp_path):
    """tree_flatten drops a LoRA model's empty subtrees; the restored optimizer must still step."""
    from functools import partial

    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from mlx_sched_callbacks.run.checkpoint import load_optimizer_state, save_optimizer_state
    from mlx_sched_callbacks.tiny import load_tiny

    def lora_model():
        model, _ = load_tiny(tmp_path / "tiny")
        mx.random.seed(0)  # the same LoRA weights each time
        model.freeze()
        linear_to_lora_layers(model, 2, {"rank": 4, "dropout": 0.0, "scale": 10.0})
        return model

    tokens = mx.array(np.random.default_rng(0).integers(3, 500, size=(2, 16)))

    def loss_fn(model, x):
        logits = model(x[:, :-1])
        return nn.losses.cross_entropy(logits, x[:, 1:], reduction="mean")

    def run(model, optimizer, steps):
        state = [model.state, optimizer.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def step(x):
            loss, grads = nn.value_and_grad(model, loss_fn)(model, x)
            optimizer.update(model, grads)
            return loss

        for _ in range(steps):
            mx.eval(step(tokens), state)

    whole = lora_model()
    whole_optimizer = optim.Adam(learning_rate=1e-3)
    whole_optimizer.init(whole.trainable_parameters())
    run(whole, whole_optimizer, 6)

    first = lora_model()
    optimizer = optim.Adam(learning_rate=1e-3)
    optimizer.init(first.trainable_parameters())
    run(first, optimizer, 3)
    save_optimizer_state(optimizer, tmp_path / "optimizer.safetensors")
    mx.save_safetensors(
        str(tmp_path / "a.safetensors"), dict(tree_flatten(first.trainable_parameters()))
    )

    resumed = lora_model()
    resumed.load_weights(str(tmp_path / "a.safetensors"), strict=False)
    restored = optim.Adam(learning_rate=1e-3)
    load_optimizer_state(
        restored, tmp_path / "optimizer.safetensors", resumed.trainable_parameters()
    )
    run(resumed, restored, 3)  # KeyError: 'layer_types' before the fix
    ours = dict(tree_flatten(resumed.trainable_parameters()))
    theirs = dict(tree_flatten(whole.trainable_parameters()))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert np.array(ours[key]).tobytes() == np.array(theirs[key]).tobytes(), key
