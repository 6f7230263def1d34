import json
import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars

from mlx_sched_callbacks import LRScheduleCallback
from mlx_sched_callbacks import schedules as S


def seed_schedule():
    return S.join_schedules([S.linear_schedule(0, 0.1, steps=10), S.cosine_decay(0.1, 200)], [10])


def mlx_seed_schedule():
    return optim.join_schedules(
        [optim.linear_schedule(0, 0.1, steps=10), optim.cosine_decay(0.1, 200)], [10]
    )


def test_seed_example_after_12_updates():
    optimizer = optim.Adam(learning_rate=0.0)
    callback = LRScheduleCallback(seed_schedule(), optimizer)
    for _ in range(12):
        callback.on_step_begin()
        optimizer.update({}, {})
        callback.on_step_end()
    reference = optim.Adam(learning_rate=mlx_seed_schedule())
    for _ in range(12):
        reference.update({}, {})
    assert optimizer.learning_rate.item() == reference.learning_rate.item()
    assert optimizer.learning_rate.item() == pytest.approx(0.0999938, abs=5e-8)
    assert callback.step == 12


def test_1000_updates_use_the_rates_mlx_uses_inside_the_optimizer():
    """Record the rate each real update used, through a parameter that SGD moves by it."""

    def rates_used(optimizer, before_update=lambda: None):
        # From w = 0 with gradient -1, SGD lands exactly on the rate it used.
        used = []
        for _ in range(1000):
            before_update()
            new = optimizer.apply_gradients({"w": mx.array(-1.0)}, {"w": mx.array(0.0)})
            used.append(new["w"].item())
        return np.array(used)

    ours_opt = optim.SGD(learning_rate=0.0)
    callback = LRScheduleCallback(seed_schedule(), ours_opt)

    began = []

    def before():
        if began:
            callback.on_step_end()
        began.append(callback.on_step_begin())

    ours = rates_used(ours_opt, before)
    theirs = rates_used(optim.SGD(learning_rate=mlx_seed_schedule()))
    assert np.abs(ours - theirs).max() <= 1e-7
    assert ours[11] == pytest.approx(0.0999938, abs=1e-7)


def test_stored_rate_is_float32_scalar_and_a_compiled_step_never_retraces():
    mx.random.seed(0)
    model = nn.Linear(4, 1)
    optimizer = optim.AdamW(learning_rate=0.0)
    optimizer.init(model.trainable_parameters())
    callback = LRScheduleCallback(S.warmup_cosine(1e-2, 5, 50), optimizer)
    traces = []
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        traces.append(1)  # runs only while tracing
        loss, grads = nn.value_and_grad(model, lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
        return loss

    x, y = mx.ones((8, 4)), mx.zeros((8, 1))
    rates = []
    for _ in range(50):
        rates.append(callback.on_step_begin())
        assert optimizer.learning_rate.dtype == mx.float32 and optimizer.learning_rate.shape == ()
        mx.eval(step(x, y), state)
        callback.on_step_end()
    assert len(set(rates)) > 40  # the rate really changed
    assert len(traces) == 1
    # ...and the compiled step used the new rates: the optimizer's step count moved on.
    assert optimizer.step.item() == 50


def test_refuses_an_optimizer_built_with_a_schedule():
    with pytest.raises(ValueError, match="callable learning_rate.*float"):
        LRScheduleCallback(seed_schedule(), optim.Adam(learning_rate=mlx_seed_schedule()))
    multi = optim.MultiOptimizer(
        [optim.SGD(learning_rate=0.1), optim.Adam(learning_rate=mlx_seed_schedule())],
        [lambda name, weight: weight.ndim > 1],
    )
    with pytest.raises(ValueError, match="callable learning_rate"):
        LRScheduleCallback(seed_schedule(), multi)


def test_refuses_bad_arguments():
    with pytest.raises(TypeError, match="schedule must be a schedule"):
        LRScheduleCallback(mlx_seed_schedule(), optim.SGD(learning_rate=0.1))
    with pytest.raises(TypeError, match="optimizer"):
        LRScheduleCallback(seed_schedule(), object())
    with pytest.raises(ValueError, match="log_every must be a positive integer, got 0"):
        LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.1), log_every=0)


def test_refuses_a_non_finite_rate_before_the_optimizer_sees_it():
    optimizer = optim.SGD(learning_rate=0.5)
    # 1e30 is a float32; 1e60 is not (float32 tops out at 3.4e38), nor is 1e400 a float64.
    callback = LRScheduleCallback(S.exponential_decay(1.0, 1e30), optimizer)
    callback.on_step_begin()
    callback.on_step_end()
    callback.on_step_begin()
    callback.on_step_end()
    with pytest.raises(ValueError, match="non-finite"):
        callback.on_step_begin()
    assert callback.step == 2  # nothing counted for the refused step


def run_steps(callback, n):
    for _ in range(n):
        callback.on_step_begin()
        callback.on_step_end()


def expected_points(schedule, first, last, every=1):
    return [
        (step, float(np.float32(schedule(step - 1))))
        for step in range(first, last + 1)
        if step % every == 0
    ]


@pytest.mark.parametrize("every", [1, 7])
def test_logs_every_point_on_the_documented_axis(tmp_path, every):
    schedule = seed_schedule()
    with LRScheduleCallback(
        schedule, optim.SGD(learning_rate=0.0), tmp_path, log_every=every
    ) as callback:
        run_steps(callback, 60)
    assert read_scalars(tmp_path) == expected_points(schedule, 1, 60, every)


def test_state_dict_is_a_checkpoint_of_the_log(tmp_path):
    callback = LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.0), tmp_path)
    run_steps(callback, 1000)
    state = callback.state_dict()
    # Read while the writer is still open, as a kill right now would leave it.
    assert [s for s, _ in read_scalars(tmp_path)] == list(range(1, 1001))
    assert state["step"] == 1000
    json.dumps(state)
    callback.close()


def test_save_and_load_round_trip(tmp_path):
    optimizer = optim.SGD(learning_rate=0.0)
    first = LRScheduleCallback(seed_schedule(), optimizer)
    run_steps(first, 37)
    first.save(tmp_path / "cb.json")
    assert not [p for p in tmp_path.iterdir() if p.name != "cb.json"]  # no temp file left
    second = LRScheduleCallback(seed_schedule(), optimizer)
    second.load(tmp_path / "cb.json")
    assert second.step == 37
    assert second.on_step_begin() == seed_schedule()(37)
    saved = json.loads((tmp_path / "cb.json").read_text())
    assert saved["version"] == 1 and saved["schedule"] == seed_schedule().to_dict()


def test_loading_a_different_schedule_shows_the_difference(tmp_path):
    optimizer = optim.SGD(learning_rate=0.0)
    old = LRScheduleCallback(seed_schedule(), optimizer)
    run_steps(old, 5)
    longer = S.join_schedules([S.linear_schedule(0, 0.1, steps=10), S.cosine_decay(0.1, 500)], [10])
    new = LRScheduleCallback(longer, optimizer)
    with pytest.raises(ValueError, match=r"schedule.schedules\[1\].decay_steps: 200 != 500"):
        new.load_state_dict(old.state_dict())
    assert new.step == 0
    new.load_state_dict(old.state_dict(), allow_schedule_change=True)
    assert new.step == 5 and new.schedule == longer


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.update(version=2), "version 2"),
        (lambda s: s.pop("step"), r"missing field\(s\) \['step'\]"),
        (lambda s: s.update(step=-3), "step must be an integer >= 0, got -3"),
        (lambda s: s.update(format="other"), "format 'other'"),
        (lambda s: s["schedule"].update(name="warp"), "name must be one of"),
        (lambda s: s["schedule"]["boundaries"].__setitem__(0, 11), "schedule_fingerprint"),
    ],
)
def test_bad_state_files_name_the_file_and_the_problem(tmp_path, edit, message):
    callback = LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.0))
    state = callback.state_dict()
    edit(state)
    path = tmp_path / "cb.json"
    path.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=message) as info:
        callback.load(path)
    assert str(path) in str(info.value)
    assert callback.step == 0


def test_truncated_state_file(tmp_path):
    callback = LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.0))
    path = tmp_path / "cb.json"
    callback.save(path)
    path.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match=f"{path} is not valid JSON.*truncated"):
        callback.load(path)


def test_resume_in_the_same_log_dir_keeps_one_clean_curve(tmp_path):
    schedule = seed_schedule()
    optimizer = optim.SGD(learning_rate=0.0)
    first = LRScheduleCallback(schedule, optimizer, tmp_path)
    run_steps(first, 40)
    first.save(tmp_path / "cb.json")
    run_steps(first, 15)  # these 41..55 are lost with the "crash"
    first.close()
    (first_file,) = tmp_path.glob("events.*")
    first_bytes = first_file.read_bytes()

    second = LRScheduleCallback(schedule, optimizer, tmp_path)
    second.load(tmp_path / "cb.json")
    run_steps(second, 60)
    second.close()

    assert read_scalars(tmp_path) == expected_points(schedule, 1, 100)
    assert len(list(tmp_path.glob("events.*"))) == 2
    assert first_file.read_bytes() == first_bytes  # nothing already written is lost


def test_log_scalar_shares_the_run_and_axis(tmp_path):
    with LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.0), tmp_path) as callback:
        for _ in range(5):
            callback.on_step_begin()
            callback.on_step_end()
            callback.log_scalar("train/loss", 1.0 / callback.step, callback.step)
    losses = read_scalars(tmp_path, "train/loss")
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5]
    assert [v for _, v in losses] == [float(np.float32(1.0 / s)) for s in range(1, 6)]


def test_no_log_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.0)) as callback:
        run_steps(callback, 3)
    assert list(tmp_path.iterdir()) == []
    assert math.isclose(callback.optimizer.learning_rate.item(), 0.02, rel_tol=1e-6)


def test_save_creates_the_folder(tmp_path):
    callback = LRScheduleCallback(seed_schedule(), optim.SGD(learning_rate=0.0))
    callback.save(tmp_path / "new" / "deeper" / "cb.json")
    assert json.loads((tmp_path / "new/deeper/cb.json").read_text())["step"] == 0


def test_adafactor_with_relative_step_is_refused():
    """Adafactor's default relative_step=True ignores the rate: the schedule would be a lie."""
    with pytest.raises(ValueError, match=r"relative_step=True .* relative_step=False"):
        LRScheduleCallback(S.constant(0.1), optim.Adafactor())
    parts = optim.MultiOptimizer([optim.SGD(learning_rate=0.0), optim.Adafactor()], [lambda *a: 0])
    with pytest.raises(ValueError, match="relative_step=True"):
        LRScheduleCallback({"0": S.constant(0.1), "1": S.constant(0.1)}, parts)
    # With relative_step=False the rate is followed: a step of rate 0 leaves the weights.
    layer = nn.Linear(2, 2)
    before = layer.weight
    optimizer = optim.Adafactor(learning_rate=0.0, relative_step=False)
    callback = LRScheduleCallback(S.constant(0.0), optimizer)
    callback.on_step_begin()
    grads = {"weight": mx.ones_like(layer.weight), "bias": mx.ones_like(layer.bias)}
    optimizer.update(layer, grads)
    assert mx.array_equal(layer.weight, before)
