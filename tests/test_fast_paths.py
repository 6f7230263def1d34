"""The fast paths give exactly what the plain ones give: rates, arrays, values."""

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest

from mlx_sched_callbacks import LRScheduleCallback
from mlx_sched_callbacks import schedules as S
from mlx_sched_callbacks.callback.core import _CACHE_STEPS

SCHEDULES = [
    S.constant(0.5),
    S.linear_schedule(0.0, 1e-3, 100),
    S.cosine_decay(1e-3, 300, end=1e-5),
    S.exponential_decay(1e-2, 0.999),
    S.step_decay(1e-2, 0.5, 37),
    S.polynomial_decay(1e-3, 250, end=1e-6, power=2.0),
    S.inverse_sqrt(1e-3, 50),
    S.cosine_restarts(1e-3, 40, period_mult=2, peak_decay=0.7, end=1e-6),
    S.cosine_restarts(1e-3, 64),
    S.warmup_cosine(3e-4, 100, 1000, init=1e-6),
    S.warmup_stable_decay(1e-3, 50, 100, 150, decay="cosine"),
    S.from_mlx_lm_config({"name": "cosine_decay", "arguments": [1e-3, 500], "warmup": 20}),
    S.join_schedules(
        [S.constant(1.0), S.warmup_cosine(1e-3, 7, 50), S.linear_schedule(1e-4, 0.0, 9)],
        [3, 60],
    ),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_at_range_is_at_bit_for_bit(schedule):
    # Negative steps too: as in at(), a join's first phase has no lower end.
    for start, stop in [(0, 1200), (-3, 4), (59, 61), (99, 101), (1000, 1000), (2**40, 2**40 + 5)]:
        assert schedule._at_range(start, stop) == [schedule.at(s) for s in range(start, stop)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s.name)
def test_values_is_the_array_path_bit_for_bit(schedule):
    np.testing.assert_array_equal(schedule.values(1200), schedule(np.arange(1200)))
    assert schedule.values(0).shape == (0,)


def rates_and_arrays(callback, steps):
    rates, stored = [], []
    for _ in range(steps):
        rates.append(callback.on_step_begin())
        lr = callback.optimizer.learning_rate
        assert lr.dtype == mx.float32 and lr.shape == ()
        stored.append(lr.item())
        callback.on_step_end()
    return rates, stored


@pytest.mark.parametrize("resume_at", [0, 1, _CACHE_STEPS - 1, _CACHE_STEPS, 1000, 12_345])
def test_cached_rates_are_at_bit_for_bit_from_any_resume_step(resume_at):
    schedule = S.warmup_cosine(3e-4, 2000, 20_000, init=1e-7)
    callback = LRScheduleCallback(schedule, optim.AdamW(learning_rate=0.0))
    callback.load_state_dict({**callback.state_dict(), "step": resume_at})
    rates, stored = rates_and_arrays(callback, 3 * _CACHE_STEPS + 5)
    steps = range(resume_at, resume_at + len(rates))
    assert rates == [schedule.at(s) for s in steps]
    # What `optimizer.learning_rate = rate` stores: mx.array(rate), rounded to float32.
    assert stored == [float(np.float32(schedule.at(s))) for s in steps]


def test_moving_the_step_or_changing_the_schedule_is_seen_at_the_next_step():
    first, second = S.cosine_decay(1e-3, 500), S.linear_schedule(0.0, 1.0, 500)
    callback = LRScheduleCallback(first, optim.SGD(learning_rate=0.0))
    rates_and_arrays(callback, 10)
    callback.step = 3  # backwards, inside the cached steps
    assert callback.on_step_begin() == first.at(3)
    callback.schedule = second
    assert callback.on_step_begin() == second.at(3)
    other = optim.Adam(learning_rate=0.0)
    callback.optimizer = other
    callback.on_step_begin()
    assert other.learning_rate.item() == np.float32(second.at(3))


def test_a_non_finite_rate_many_steps_ahead_is_refused_at_its_own_step():
    # 0 * 2.0**step is 0 until 2.0**1024 overflows; the schedule then gives nan.
    callback = LRScheduleCallback(S.exponential_decay(0.0, 2.0), optim.SGD(learning_rate=0.5))
    rates, stored = rates_and_arrays(callback, 1024)
    assert rates == stored == [0.0] * 1024
    with pytest.raises(ValueError, match="learning rate nan at step 1024"):
        callback.on_step_begin()
    assert callback.step == 1024


def test_an_error_many_steps_ahead_is_raised_at_its_own_step():
    # The third cycle's peak, 1e40, is beyond float32: refused at step 20, not before.
    schedule = S.cosine_restarts(1.0, 10, peak_decay=1e20)
    callback = LRScheduleCallback(schedule, optim.SGD(learning_rate=0.0))
    rates, _ = rates_and_arrays(callback, 20)
    assert rates == [schedule.at(s) for s in range(20)]
    with pytest.raises(ValueError, match="1e\\+40 at step 20, which is not finite in float32"):
        callback.on_step_begin()
    assert callback.step == 20


def test_multi_optimizer_parts_all_get_the_rate():
    parts = [optim.SGD(learning_rate=0.0), optim.Adam(learning_rate=0.0)]
    multi = optim.MultiOptimizer(parts, [lambda name, weight: weight.ndim > 1])
    schedule = S.warmup_cosine(1e-3, 10, 100)
    callback = LRScheduleCallback(schedule, multi)
    for step in range(70):
        rate = callback.on_step_begin()
        assert rate == schedule.at(step)
        for part in parts:
            assert part.learning_rate.item() == np.float32(rate)
            assert part.learning_rate.dtype == mx.float32 and part.learning_rate.shape == ()
        callback.on_step_end()


class Dial(S.Schedule):
    """A phase with state, like reduce_on_plateau: its value changes when it is told to."""

    name = "dial"

    def __init__(self):
        self.value = 1.0

    def state_dict(self):
        return {"value": self.value}

    def at(self, step):
        return self.value


def test_a_phase_with_state_is_read_afresh_at_every_step():
    dial = Dial()
    callback = LRScheduleCallback(
        S.join_schedules([S.constant(0.5), dial], [2]), optim.SGD(learning_rate=0.0)
    )
    assert rates_and_arrays(callback, 4)[0] == [0.5, 0.5, 1.0, 1.0]
    dial.value = 0.25  # as a plateau does when the validation loss stalls
    assert rates_and_arrays(callback, 2)[0] == [0.25, 0.25]
