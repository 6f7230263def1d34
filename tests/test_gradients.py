"""Gradient norms, clipping and the non-finite guard, in a real mx.compile'd step."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars
from mlx.utils import tree_flatten

from mlx_sched_callbacks import LRScheduleCallback, schedules
from mlx_sched_callbacks.callback.gradients import (
    GRAD_NORM,
    WATCH_KEYS,
    NonFiniteGradientError,
)
from mlx_sched_callbacks.run.checkpoint import load_optimizer_state, save_optimizer_state

SCHEDULE = schedules.warmup_cosine(0.05, warmup_steps=2, total_steps=12)


def model_and_data(seed=0):
    mx.random.seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = mx.random.normal((16, 4))
    y = mx.random.normal((16, 1)) * 3
    mx.eval(model.parameters(), x, y)
    return model, x, y


def loss_fn(model, x, y):
    return nn.losses.mse_loss(model(x), y)


def compiled_step(model, optimizer, clip=None):
    """A trainer's step: loss, gradients and the update in one compiled function."""
    state = [model.state, optimizer.state]
    loss_and_grad = nn.value_and_grad(model, loss_fn)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        if clip is not None:
            grads, _ = optim.clip_grad_norm(grads, clip)
        optimizer.update(model, grads)
        return loss

    return step, state


def snapshot(tree) -> dict:
    return {k: np.array(v).tobytes() for k, v in tree_flatten(tree)}


def train(clip_in_callback=None, clip_by_hand=None, steps=8, bad_steps=(), **options):
    model, x, y = model_and_data()
    optimizer = optim.AdamW(learning_rate=0.0)
    callback = LRScheduleCallback(SCHEDULE, optimizer, max_grad_norm=clip_in_callback, **options)
    optimizer.init(model.trainable_parameters())
    step, state = compiled_step(model, optimizer, clip_by_hand)
    seen = []
    for i in range(steps):
        callback.on_step_begin()
        batch = x * mx.array(float("inf")) if i in bad_steps else x
        step(batch, y)
        mx.eval(state)
        # What the update changes: parameters and the optimizer's own state (not the rate
        # the callback set before it, nor the watch's report on it).
        kept = {k: v for k, v in optimizer.state.items() if k not in (*WATCH_KEYS, "learning_rate")}
        seen.append(snapshot({"params": model.parameters(), "optimizer": kept}))
        callback.on_step_end()
    return model, optimizer, callback, seen


def test_clipping_equals_clip_grad_norm_by_hand_bit_for_bit():
    ours, _, callback, _ = train(clip_in_callback=0.05)
    theirs, _, _, _ = train(clip_by_hand=0.05)
    unclipped, _, _, _ = train()
    assert snapshot(ours.parameters()) == snapshot(theirs.parameters())
    assert snapshot(ours.parameters()) != snapshot(unclipped.parameters())  # it did clip
    assert callback.gradient_watch.norm() > 0.05  # the norm logged is the one before clipping


def test_grad_norm_is_the_norm_of_the_gradients_the_update_applies(tmp_path):
    model, x, y = model_and_data()
    optimizer = optim.SGD(learning_rate=0.0)
    callback = LRScheduleCallback(SCHEDULE, optimizer, tmp_path, log_grad_norm=True)
    optimizer.init(model.trainable_parameters())
    step, state = compiled_step(model, optimizer)
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    expected = []
    for _ in range(5):
        _, grads = loss_and_grad(model, x, y)  # the same gradients, outside the step
        flat = [g for _, g in tree_flatten(grads)]
        expected.append(np.sqrt(sum(float(np.square(np.array(g, np.float64)).sum()) for g in flat)))
        callback.on_step_begin()
        step(x, y)
        mx.eval(state)
        callback.on_step_end()
    callback.close()
    logged = read_scalars(tmp_path, "train/grad_norm")
    assert [s for s, _ in logged] == [1, 2, 3, 4, 5]
    # float32 sums of 49 squares against float64: within a few float32 roundings.
    np.testing.assert_allclose([v for _, v in logged], expected, rtol=4e-7 * 49, atol=0)
    assert len({v for _, v in logged}) == len(set(expected)) == 4  # update 1 has rate 0


def test_the_norm_costs_no_retrace():
    model, x, y = model_and_data()
    optimizer = optim.AdamW(learning_rate=0.0)
    callback = LRScheduleCallback(SCHEDULE, optimizer, log_grad_norm=True)
    optimizer.init(model.trainable_parameters())
    traces = []

    def loss_counted(model, x, y):
        traces.append(1)
        return loss_fn(model, x, y)

    state = [model.state, optimizer.state]
    loss_and_grad = nn.value_and_grad(model, loss_counted)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        optimizer.update(model, grads)
        return loss

    for _ in range(6):
        callback.on_step_begin()
        step(x, y)
        mx.eval(state)
        callback.on_step_end()
    assert len(traces) == 1
    assert callback.gradient_watch.norm() > 0


def test_a_non_finite_update_is_skipped_bitwise_and_the_schedule_waits(tmp_path):
    _, _, callback, seen = train(bad_steps=(3,), skip_non_finite=True, log_dir=tmp_path)
    _, _, plain, plain_seen = train()
    # The update at index 3 changed nothing: parameters and optimizer state (its step too).
    assert seen[3] == seen[2]
    assert seen[2] == plain_seen[2]
    assert callback.skipped_updates == 1 and callback.step == 7 and plain.step == 8
    callback.close()
    assert read_scalars(tmp_path, "train/skipped_updates") == [(4, 1.0)]
    rates = read_scalars(tmp_path)
    # Update 5 used the rate update 4 would have used: the schedule did not advance.
    assert [s for s, _ in rates] == [1, 2, 3, 5, 6, 7, 8]
    assert [v for _, v in rates] == pytest.approx([SCHEDULE(i) for i in range(7)], rel=1e-7)


def test_without_the_guard_a_bad_batch_poisons_the_weights():
    model, _, _, _ = train(bad_steps=(3,))
    assert not all(np.isfinite(np.array(v)).all() for _, v in tree_flatten(model.parameters()))


def test_too_many_skips_in_a_row_raise_with_the_last_good_state():
    with pytest.raises(NonFiniteGradientError, match="3 updates in a row"):
        train(bad_steps=(4, 5, 6), skip_non_finite=True, max_skipped_updates=3)
    # Two bad updates, then a good one: the count starts again.
    _, _, callback, seen = train(bad_steps=(4, 5, 7), skip_non_finite=True, max_skipped_updates=3)
    assert seen[5] == seen[3] and callback.skipped_updates == 3 and callback.skips_in_a_row == 1


def test_guard_on_and_all_finite_equals_no_guard_bit_for_bit():
    guarded, _, _, _ = train(skip_non_finite=True)
    plain, _, _, _ = train()
    assert snapshot(guarded.parameters()) == snapshot(plain.parameters())


def test_skipped_counts_are_checkpointed_and_watch_keys_are_not_saved(tmp_path):
    _, optimizer, callback, _ = train(bad_steps=(2,), skip_non_finite=True)
    state = callback.state_dict()
    assert (state["step"], state["skipped_updates"], state["skips_in_a_row"]) == (7, 1, 0)
    save_optimizer_state(optimizer, tmp_path / "o.safetensors")
    assert not set(mx.load(str(tmp_path / "o.safetensors"))) & set(WATCH_KEYS)
    model, _, _ = model_and_data()
    other = optim.AdamW(learning_rate=0.0)
    fresh = LRScheduleCallback(SCHEDULE, other, skip_non_finite=True)
    fresh.load_state_dict(state)
    assert (fresh.step, fresh.skipped_updates) == (7, 1)
    load_optimizer_state(other, tmp_path / "o.safetensors", model.trainable_parameters())
    assert GRAD_NORM in other.state  # the watch's keys survive a load


def test_bad_gradient_options_are_refused():
    optimizer = optim.SGD(learning_rate=0.0)
    for bad in (0, -1.0, float("inf"), "1", True):
        with pytest.raises(ValueError, match="max_grad_norm must be a positive finite number"):
            LRScheduleCallback(SCHEDULE, optimizer, max_grad_norm=bad)
    with pytest.raises(ValueError, match="max_skipped_updates must be an integer >= 1"):
        LRScheduleCallback(SCHEDULE, optimizer, skip_non_finite=True, max_skipped_updates=0)
