"""The schedules of one shape each: constant, linear, cosine, exponential, step, polynomial,
inverse square root, and cosine with restarts."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from .base import (
    MAX_STEP,
    Schedule,
    _check_int,
    _check_number,
    _check_positive_number,
    _check_span,
    _clip,
)


class constant(Schedule):  # noqa: N801 - named like the mlx.optimizers functions
    """The same ``value`` at every step."""

    name = "constant"
    _fields = ("value",)

    def __init__(self, value: float):
        self.value = _check_number(self.name, "value", value)

    def at(self, step):
        return self.value

    def _at_range(self, start, stop):
        return [self.value] * max(0, stop - start)

    def _array(self, step, xp):
        if xp is mx:
            return mx.full(step.shape, self.value, dtype=mx.float32)
        return np.full(step.shape, self.value)


class linear_schedule(Schedule):  # noqa: N801
    """From ``init`` to ``end`` linearly over ``steps`` steps, then ``end``.

    Same as ``mlx.optimizers.linear_schedule``.
    """

    name = "linear_schedule"
    _fields = ("init", "end", "steps")

    def __init__(self, init: float, end: float, steps: int):
        self.init = _check_number(self.name, "init", init)
        self.end = _check_number(self.name, "end", end)
        self.steps = _check_int(self.name, "steps", steps, minimum=1)
        _check_span(self.name, self.init, self.end)

    def at(self, step):
        return self._at_range(step, step + 1)[0]

    def _at_range(self, start, stop):
        # The formula lives here, written for many steps at once (the callback's
        # cache): the step-free parts out of the loop.
        steps, init, end = self.steps, self.init, self.end
        slope = (end - init) / steps
        lo, hi = min(init, end), max(init, end)
        return [
            (v if lo <= (v := s * slope + init) <= hi else lo if v < lo else hi)
            if s < steps
            else end
            for s in range(start, stop)
        ]  # _clip inlined, as in cosine_decay

    def _array(self, step, xp):
        value = xp.minimum(step, self.steps) * ((self.end - self.init) / self.steps) + self.init
        if xp is mx:  # mlx's own float32 formula, unchanged
            return value
        low, high = min(self.init, self.end), max(self.init, self.end)
        return np.where(step >= self.steps, self.end, np.clip(value, low, high))


class cosine_decay(Schedule):  # noqa: N801
    """Half a cosine from ``init`` to ``end`` over ``decay_steps``, then ``end``.

    Same as ``mlx.optimizers.cosine_decay``.
    """

    name = "cosine_decay"
    _fields = ("init", "decay_steps", "end")

    def __init__(self, init: float, decay_steps: int, end: float = 0.0):
        self.init = _check_number(self.name, "init", init)
        self.decay_steps = _check_int(self.name, "decay_steps", decay_steps, minimum=1)
        self.end = _check_number(self.name, "end", end)
        _check_span(self.name, self.init, self.end)

    def at(self, step):
        return self._at_range(step, step + 1)[0]

    def _at_range(self, start, stop):
        # The formula lives here, written for many steps at once (the callback's
        # cache): the step-free parts out of the loop.
        cos, n, init, end = math.cos, self.decay_steps, self.init, self.end
        span, frequency = init - end, math.pi / self.decay_steps
        lo, hi = min(init, end), max(init, end)
        # _clip inlined (a call per step is a third of the time here); the same floats.
        return [
            (v if lo <= (v := end + 0.5 * (1.0 + cos(frequency * s)) * span) <= hi else
             lo if v < lo else hi)
            if 0 < s < n
            else (init if s == 0 else end)
            for s in range(start, stop)
        ]  # fmt: skip

    def _array(self, step, xp):
        s = xp.minimum(step, self.decay_steps)
        decay = 0.5 * (1.0 + xp.cos((math.pi / self.decay_steps) * s))
        value = self.end + decay * (self.init - self.end)
        if xp is mx:  # mlx's own float32 formula, unchanged
            return value
        low, high = min(self.init, self.end), max(self.init, self.end)
        value = np.where(step == 0, self.init, np.clip(value, low, high))
        return np.where(step >= self.decay_steps, self.end, value)


class exponential_decay(Schedule):  # noqa: N801
    """``init * decay_rate ** step``.

    Same formula as ``mlx.optimizers.exponential_decay``. mlx evaluates it in
    float32, so its values drift from the formula as the step grows; this one
    follows the formula in double precision (and in float32 only for an
    ``mx.array`` step).
    """

    name = "exponential_decay"
    _fields = ("init", "decay_rate")

    def __init__(self, init: float, decay_rate: float):
        self.init = _check_number(self.name, "init", init)
        self.decay_rate = _check_positive_number(self.name, "decay_rate", decay_rate)

    def at(self, step):
        try:
            return self.init * self.decay_rate**step
        except OverflowError:
            return math.copysign(math.inf, self.init) if self.init else math.nan

    def _array(self, step, xp):
        return self.init * self.decay_rate**step


class step_decay(Schedule):  # noqa: N801
    """``init * decay_rate ** (step // step_size)``.

    Same as ``mlx.optimizers.step_decay``.
    """

    name = "step_decay"
    _fields = ("init", "decay_rate", "step_size")

    def __init__(self, init: float, decay_rate: float, step_size: int):
        self.init = _check_number(self.name, "init", init)
        self.decay_rate = _check_positive_number(self.name, "decay_rate", decay_rate)
        self.step_size = _check_int(self.name, "step_size", step_size, minimum=1)

    def at(self, step):
        try:
            return self.init * self.decay_rate ** (step // self.step_size)
        except OverflowError:
            return math.copysign(math.inf, self.init) if self.init else math.nan

    def _array(self, step, xp):
        return self.init * self.decay_rate ** (step // self.step_size)


class polynomial_decay(Schedule):  # noqa: N801
    """``end + (init - end) * (1 - step / decay_steps) ** power``, then ``end``.

    ``power=1`` is a linear decay; torch's ``PolynomialLR`` and optax's
    ``polynomial_schedule`` use the same formula.
    """

    name = "polynomial_decay"
    _fields = ("init", "decay_steps", "end", "power")

    def __init__(self, init: float, decay_steps: int, end: float = 0.0, power: float = 1.0):
        self.init = _check_number(self.name, "init", init)
        self.decay_steps = _check_int(self.name, "decay_steps", decay_steps, minimum=1)
        self.end = _check_number(self.name, "end", end)
        self.power = _check_positive_number(self.name, "power", power)
        _check_span(self.name, self.init, self.end)

    def at(self, step):
        if step == 0:
            return self.init
        remaining = 1.0 - min(step, self.decay_steps) / self.decay_steps
        return _clip(self.end + (self.init - self.end) * remaining**self.power, self.init, self.end)

    def _array(self, step, xp):
        remaining = 1.0 - xp.minimum(step, self.decay_steps) / self.decay_steps
        value = self.end + (self.init - self.end) * remaining**self.power
        if xp is mx:
            return value
        low, high = min(self.init, self.end), max(self.init, self.end)
        return np.where(step == 0, self.init, np.clip(value, low, high))


class inverse_sqrt(Schedule):  # noqa: N801
    """``init / sqrt(1 + step / timescale)``: ``init`` at step 0, halved at ``3 * timescale``.

    Joined after a warmup of ``w`` steps this is transformers'
    ``get_inverse_sqrt_schedule(num_warmup_steps=w, timescale=timescale)``.
    """

    name = "inverse_sqrt"
    _fields = ("init", "timescale")

    def __init__(self, init: float, timescale: int):
        self.init = _check_number(self.name, "init", init)
        self.timescale = _check_int(self.name, "timescale", timescale, minimum=1)

    def at(self, step):
        return self.init / math.sqrt(1.0 + step / self.timescale)

    def _array(self, step, xp):
        return self.init / xp.sqrt(1.0 + step / self.timescale)


class cosine_restarts(Schedule):  # noqa: N801
    """Cosine annealing with warm restarts (SGDR, torch's ``CosineAnnealingWarmRestarts``).

    Cycle ``i`` lasts ``period * period_mult ** i`` steps and decays from
    ``init * peak_decay ** i`` towards ``end``; the next cycle restarts at its peak.
    """

    name = "cosine_restarts"
    _fields = ("init", "period", "period_mult", "peak_decay", "end")

    def __init__(
        self,
        init: float,
        period: int,
        period_mult: int = 1,
        peak_decay: float = 1.0,
        end: float = 0.0,
    ):
        self.init = _check_number(self.name, "init", init)
        self.period = _check_int(self.name, "period", period, minimum=1)
        self.period_mult = _check_int(self.name, "period_mult", period_mult, minimum=1)
        self.peak_decay = _check_positive_number(self.name, "peak_decay", peak_decay)
        self.end = _check_number(self.name, "end", end)

    def _cycle_start(self, cycle):
        if self.period_mult == 1:
            return self.period * cycle
        return self.period * (self.period_mult**cycle - 1) // (self.period_mult - 1)

    def at(self, step):
        if self.period_mult == 1:
            cycle = step // self.period
        else:
            ratio = 1 + step * (self.period_mult - 1) / self.period
            cycle = int(math.log(ratio) / math.log(self.period_mult))
            # The logarithm can land one cycle off near a restart; integers settle it.
            while self._cycle_start(cycle) > step:
                cycle -= 1
            while self._cycle_start(cycle + 1) <= step:
                cycle += 1
        length = self.period * self.period_mult**cycle
        into = step - self._cycle_start(cycle)
        try:
            peak = self.init * self.peak_decay**cycle
        except OverflowError:
            peak = math.copysign(math.inf, self.init) if self.init else 0.0
        return self.end + (peak - self.end) * 0.5 * (1.0 + math.cos(math.pi * into / length))

    def _array(self, step, xp):
        mult, period = self.period_mult, self.period
        if xp is np and mult > 1:
            # Exact integer cycle starts: float64 rounding misplaces restarts past 2**52.
            starts = [0]
            while starts[-1] <= MAX_STEP:
                starts.append(min(self._cycle_start(len(starts)), MAX_STEP + 1))
            starts = np.array(starts, dtype=np.int64)
            cycle = np.searchsorted(starts, step, side="right") - 1
            length = period * np.float64(mult) ** cycle
            with np.errstate(over="ignore"):
                peak = self.init * self.peak_decay ** cycle.astype(np.float64)
            into = (step - starts[cycle]).astype(np.float64)
            return self.end + (peak - self.end) * 0.5 * (1.0 + np.cos(math.pi * into / length))
        if mult == 1:
            cycle = step // period
            start = cycle * period
            length = period + 0 * step
        else:
            ratio = 1 + step * ((mult - 1) / period)
            cycle = xp.floor(xp.log(ratio) / math.log(mult))

            def start_of(c):
                return xp.floor(period * (mult**c - 1) / (mult - 1) + 0.5)

            cycle = xp.where(start_of(cycle) > step, cycle - 1, cycle)
            cycle = xp.where(start_of(cycle + 1) <= step, cycle + 1, cycle)
            start = start_of(cycle)
            length = period * mult**cycle
        peak = self.init * self.peak_decay**cycle
        return self.end + (peak - self.end) * 0.5 * (
            1.0 + xp.cos(math.pi * (step - start) / length)
        )
