"""Learning-rate schedules that are plain data: saved, compared, previewed and resumed.

Each schedule is a pure function of the optimizer update count ``step``:

* called with a Python ``int`` it returns a Python ``float``, computed in double
  precision with ``math`` (the callback uses this);
* called with an ``mx.array`` step it returns an ``mx.array`` (float32), so the same
  object can be handed to an mlx optimizer as ``learning_rate=``;
* called with a numpy integer array it returns a float64 numpy array: the whole
  planned curve at once, for previews and plots.

The first five mirror ``mlx.optimizers`` names, argument names and order, so that
switching from ``mlx.optimizers`` changes only the import. Every schedule has
``to_dict()``; :func:`from_dict` rebuilds it from that JSON-safe form.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import numbers
import warnings

import mlx.core as mx
import numpy as np

__all__ = [
    "Schedule",
    "constant",
    "cosine_decay",
    "cosine_restarts",
    "exponential_decay",
    "from_dict",
    "from_mlx_lm_config",
    "inverse_sqrt",
    "join_schedules",
    "linear_schedule",
    "polynomial_decay",
    "reduce_on_plateau",
    "step_decay",
    "warmup_cosine",
    "warmup_stable_decay",
]

# Step counts stay exact in float64 up to 2**53; beyond that a schedule cannot
# tell neighbouring steps apart, so larger values are refused as mistakes.
MAX_STEP = 2**53


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_number(owner: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a finite number, got {_describe(value)}.")
    try:
        value = float(value) + 0.0  # + 0.0: -0.0 and 0.0 are one value, with one fingerprint
    except OverflowError:
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}.")
    return value


def _check_span(owner: str, init: float, end: float) -> None:
    if not math.isfinite(init - end):
        raise ValueError(
            f"{owner}: init - end must be a finite number, got init={init!r}, end={end!r}."
        )


def _clip(value: float, a: float, b: float) -> float:
    # Rounding must not carry a value past the ends it moves between.
    return min(max(value, a), b) if a <= b else min(max(value, b), a)


def _check_positive_number(owner: str, name: str, value) -> float:
    value = _check_number(owner, name, value)
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be greater than 0, got {value!r}.")
    return value


def _check_int(owner: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{owner}: {name} must be an integer >= {minimum}, got {_describe(value)}."
        )
    value = int(value)
    if not minimum <= value <= MAX_STEP:
        raise ValueError(
            f"{owner}: {name} must be an integer in [{minimum}, 2**53], got {value!r}."
        )
    return value


def _check_step(step) -> int:
    return _check_int("schedule", "step", step, minimum=0)


class Schedule:
    """Base of every schedule: a pure ``step -> value`` function that is also data.

    Subclasses set ``name`` (the key in ``to_dict()``), ``_fields`` (constructor
    arguments in order), and implement ``at(step)`` (Python float, double precision)
    and ``_array(step, xp)`` (vectorised with ``xp`` = ``mx`` or ``np``).
    """

    name: str = ""
    _fields: tuple[str, ...] = ()

    def __call__(self, step):
        if isinstance(step, mx.array):
            return self._array(step, mx)
        if isinstance(step, np.ndarray):
            if step.dtype.kind not in "iu":
                raise ValueError(
                    f"schedule: step must be an integer array, got dtype {step.dtype}."
                )
            if step.size and (step.min() < 0 or step.max() > MAX_STEP):
                raise ValueError("schedule: steps must lie in [0, 2**53].")
            return np.asarray(self._array(step.astype(np.int64), np), dtype=np.float64)
        return self.at(_check_step(step))

    def at(self, step: int) -> float:
        """The value at ``step`` as a Python float, without argument checks."""
        raise NotImplementedError

    def _array(self, step, xp):
        raise NotImplementedError

    def values(self, num_steps: int) -> np.ndarray:
        """The values at steps ``0 .. num_steps - 1`` as a float64 numpy array."""
        num_steps = _check_int(self.name, "num_steps", num_steps, minimum=0)
        return self._values(0, num_steps)

    def _values(self, start: int, stop: int) -> np.ndarray:
        # Steps start .. stop - 1 with numpy; joins override it to skip masks.
        steps = np.arange(start, stop, dtype=np.int64)
        return np.asarray(self._array(steps, np), dtype=np.float64)

    def _at_range(self, start: int, stop: int) -> list[float]:
        """``[self.at(s) for s in range(start, stop)]``: the same floats, bit for bit.

        The callback fills its cache of rates with it; joins override it to
        hand each phase its steps without looking the phase up for every step.
        """
        at = self.at
        return [at(s) for s in range(start, stop)]

    def to_dict(self) -> dict:
        return {"name": self.name, **{f: getattr(self, f) for f in self._fields}}

    def fingerprint(self) -> str:
        """A short hash of ``to_dict()``: equal schedules have equal fingerprints."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def __eq__(self, other):
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(self.fingerprint())

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self.name}({args})"


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
        return [
            _clip(s * slope + init, init, end) if s < steps else end for s in range(start, stop)
        ]

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
        return [
            _clip(end + 0.5 * (1.0 + cos(frequency * s)) * span, init, end)
            if 0 < s < n
            else (init if s == 0 else end)
            for s in range(start, stop)
        ]

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


class join_schedules(Schedule):  # noqa: N801
    """Schedule ``i + 1`` takes over at ``boundaries[i]`` and sees ``step - boundaries[i]``.

    Same as ``mlx.optimizers.join_schedules``, for schedules from this module.
    """

    name = "join_schedules"
    _fields = ("schedules", "boundaries")

    def __init__(self, schedules: list[Schedule], boundaries: list[int]):
        owner = self.name
        if not isinstance(schedules, (list, tuple)) or not schedules:
            raise ValueError(
                f"{owner}: schedules must be a non-empty list, got {_describe(schedules)}."
            )
        for i, s in enumerate(schedules):
            if not isinstance(s, Schedule):
                raise ValueError(
                    f"{owner}: schedules[{i}] must be a schedule from "
                    f"mlx_sched_callbacks.schedules (mlx closures cannot be saved), "
                    f"got {_describe(s)}."
                )
        if not isinstance(boundaries, (list, tuple)):
            raise ValueError(f"{owner}: boundaries must be a list, got {_describe(boundaries)}.")
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"{owner}: boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
                f"entries, got {len(boundaries)}."
            )
        boundaries = [
            _check_int(owner, f"boundaries[{i}]", b, minimum=1) for i, b in enumerate(boundaries)
        ]
        for i in range(1, len(boundaries)):
            if boundaries[i] <= boundaries[i - 1]:
                raise ValueError(
                    f"{owner}: boundaries must be strictly increasing, got "
                    f"boundaries[{i - 1}]={boundaries[i - 1]} then boundaries[{i}]={boundaries[i]}."
                )
        self.schedules = list(schedules)
        self.boundaries = boundaries

    def at(self, step):
        phase = bisect.bisect_right(self.boundaries, step)
        offset = self.boundaries[phase - 1] if phase else 0
        return self.schedules[phase].at(step - offset)

    def _array(self, step, xp):
        if xp is np:
            out = np.empty(step.shape, dtype=np.float64)
            edges = [0, *self.boundaries, MAX_STEP + 1]
            for schedule, lo, hi in zip(self.schedules, edges, edges[1:]):
                inside = (step >= lo) & (step < hi)
                if inside.any():
                    out[inside] = schedule._array(step[inside] - lo, np)
            return out
        output = self.schedules[0]._array(step, mx)
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            # maximum() keeps an unsigned step from wrapping around below the boundary.
            later = schedule._array(mx.maximum(step, boundary) - boundary, mx)
            output = mx.where(step < boundary, output, later)
        return output

    def _phases(self, start: int, stop: int):
        """``(schedule, offset, lo, hi)`` for each phase that steps ``start .. stop - 1`` reach.

        As in ``at()``, the first phase has no lower end and the last no upper end.
        """
        offsets = [0, *self.boundaries]
        for i, schedule in enumerate(self.schedules):
            lo = max(start, offsets[i]) if i else start
            hi = min(stop, offsets[i + 1]) if i + 1 < len(offsets) else stop
            if lo < hi:
                yield schedule, offsets[i], lo, hi

    def _values(self, start, stop):
        out = np.empty(max(0, stop - start), dtype=np.float64)
        for schedule, offset, lo, hi in self._phases(start, stop):
            out[lo - start : hi - start] = schedule._values(lo - offset, hi - offset)
        return out

    def _at_range(self, start, stop):
        out = []
        for schedule, offset, lo, hi in self._phases(start, stop):
            out += schedule._at_range(lo - offset, hi - offset)
        return out

    def to_dict(self):
        return {
            "name": self.name,
            "schedules": [s.to_dict() for s in self.schedules],
            "boundaries": list(self.boundaries),
        }

    def __repr__(self):
        inner = ", ".join(repr(s) for s in self.schedules)
        return f"join_schedules([{inner}], boundaries={self.boundaries!r})"


def warmup_cosine(
    peak: float, warmup_steps: int, total_steps: int, init: float = 0.0, end: float = 0.0
) -> Schedule:
    """Linear warmup from ``init`` to ``peak``, then cosine decay to ``end``.

    ``total_steps`` *includes* the warmup, as in optax's
    ``warmup_cosine_decay_schedule``: the rate reaches ``end`` at step
    ``total_steps``. (mlx-lm's ``lr_schedule`` config counts its cosine steps
    *after* the warmup; use :func:`from_mlx_lm_config` for that form.)
    Returns a :class:`join_schedules`, or a :class:`cosine_decay` when
    ``warmup_steps`` is 0.
    """
    owner = "warmup_cosine"
    peak = _check_number(owner, "peak", peak)
    init, end = _check_number(owner, "init", init), _check_number(owner, "end", end)
    warmup_steps = _check_int(owner, "warmup_steps", warmup_steps, minimum=0)
    total_steps = _check_int(owner, "total_steps", total_steps, minimum=1)
    if total_steps <= warmup_steps:
        raise ValueError(
            f"{owner}: total_steps must be greater than warmup_steps={warmup_steps}, "
            f"got {total_steps}."
        )
    decay = cosine_decay(peak, total_steps - warmup_steps, end)
    if warmup_steps == 0:
        return decay
    return join_schedules([linear_schedule(init, peak, warmup_steps), decay], [warmup_steps])


def warmup_stable_decay(
    peak: float,
    warmup_steps: int,
    stable_steps: int,
    decay_steps: int,
    init: float = 0.0,
    end: float = 0.0,
    decay: str = "linear",
) -> Schedule:
    """Warmup-stable-decay (WSD): warm up to ``peak``, hold it, then decay to ``end``.

    ``decay`` is ``"linear"`` or ``"cosine"``. The rate reaches ``end`` at step
    ``warmup_steps + stable_steps + decay_steps``. Returns a :class:`join_schedules`.
    """
    owner = "warmup_stable_decay"
    peak = _check_number(owner, "peak", peak)
    init, end = _check_number(owner, "init", init), _check_number(owner, "end", end)
    warmup_steps = _check_int(owner, "warmup_steps", warmup_steps, minimum=0)
    stable_steps = _check_int(owner, "stable_steps", stable_steps, minimum=1)
    decay_steps = _check_int(owner, "decay_steps", decay_steps, minimum=1)
    if warmup_steps + stable_steps > MAX_STEP:
        raise ValueError(
            f"{owner}: warmup_steps + stable_steps must be at most 2**53, got "
            f"{warmup_steps} + {stable_steps}."
        )
    if decay == "linear":
        decay_phase = linear_schedule(peak, end, decay_steps)
    elif decay == "cosine":
        decay_phase = cosine_decay(peak, decay_steps, end)
    else:
        raise ValueError(f"{owner}: decay must be 'linear' or 'cosine', got {decay!r}.")
    phases = [constant(peak), decay_phase]
    boundaries = [warmup_steps + stable_steps]
    if warmup_steps:
        phases.insert(0, linear_schedule(init, peak, warmup_steps))
        boundaries.insert(0, warmup_steps)
    return join_schedules(phases, boundaries)


_KINDS = {
    cls.name: cls
    for cls in (
        constant,
        linear_schedule,
        cosine_decay,
        exponential_decay,
        step_decay,
        polynomial_decay,
        inverse_sqrt,
        cosine_restarts,
        join_schedules,
    )
}


def _constructor_fields(cls) -> tuple[list[str], list[str]]:
    defaults = cls.__init__.__defaults__ or ()
    required = list(cls._fields[: len(cls._fields) - len(defaults)])
    return required, list(cls._fields)


MAX_JOIN_DEPTH = 100  # how deep from_dict lets joins nest: deeper is refused, not a RecursionError


def from_dict(spec: dict) -> Schedule:
    """Rebuild a schedule from ``Schedule.to_dict()`` output (joins nested up to 100 deep)."""
    level = [spec]
    for _ in range(MAX_JOIN_DEPTH + 1):
        lists = [d["schedules"] for d in level if isinstance(d, dict) and "schedules" in d]
        inner = [s for schedules in lists if isinstance(schedules, list) for s in schedules]
        level = list({id(s): s for s in inner}.values())  # a part shared n times counts once
        if not level:
            return _from_dict(spec)
    raise ValueError(
        f"from_dict: join_schedules are nested more than {MAX_JOIN_DEPTH} deep; a real "
        "schedule needs a few joins, so the spec is malformed."
    )


def _from_dict(spec: dict) -> Schedule:
    if not isinstance(spec, dict):
        raise ValueError(f"from_dict: spec must be a dict, got {_describe(spec)}.")
    odd_keys = [k for k in spec if not isinstance(k, str)]
    if odd_keys:
        raise ValueError(f"from_dict: field names must be strings, got {odd_keys!r}.")
    name = spec.get("name")
    if not isinstance(name, str) or name not in _KINDS:
        raise ValueError(f"from_dict: name must be one of {sorted(_KINDS)}, got {name!r}.")
    cls = _KINDS[name]
    required, allowed = _constructor_fields(cls)
    missing = [f for f in required if f not in spec]
    if missing:
        raise ValueError(f"from_dict: {name} is missing field(s) {missing}; it needs {required}.")
    unknown = sorted(set(spec) - set(allowed) - {"name"})
    if unknown:
        raise ValueError(f"from_dict: {name} has unknown field(s) {unknown}; allowed: {allowed}.")
    arguments = {f: spec[f] for f in allowed if f in spec}
    if cls is join_schedules:
        inner = arguments["schedules"]
        if not isinstance(inner, list):
            raise ValueError(
                f"from_dict: join_schedules.schedules must be a list, got {_describe(inner)}."
            )
        built = []
        for i, s in enumerate(inner):
            try:
                built.append(_from_dict(s))
            except ValueError as error:
                raise ValueError(f"join_schedules.schedules[{i}]: {error}") from None
        arguments["schedules"] = built
    return cls(**arguments)


# The mlx.optimizers schedules that mlx-lm's build_schedule can build from a config, each with
# its arguments that count steps. (join_schedules takes schedule functions, which no config
# can hold; build_schedule builds it and the first step fails.)
_MLX_LM_STEP_ARGUMENTS = {
    "cosine_decay": ("decay_steps",),
    "exponential_decay": (),
    "linear_schedule": ("steps",),
    "step_decay": ("step_size",),
}
_MLX_LM_KEYS = ("name", "arguments", "warmup", "warmup_init")


def _mlx_lm_steps(where: str, value):
    """A step count as mlx-lm takes it: YAML reads ``1e3`` and ``5.0`` as floats, and mlx's
    schedules count with them, so a whole float is that many steps."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{where} must be a whole number of steps, got {value!r}.")
        return int(value)
    return value


def _refuse_number_text(where: str, value) -> None:
    # PyYAML alone reads 1e-5 as text (YAML 1.1 floats need a dot); mlx-lm's loader reads a float.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return
        raise ValueError(
            f"{where} must be a number, got the string {value!r}: load the YAML with "
            f"mlx_lm.lora.yaml_loader (as mlx_lm.lora does), or write it with a dot (1.0e-5)."
        )


def from_mlx_lm_config(cfg: dict) -> Schedule:
    """The schedule that ``mlx_lm.tuner.utils.build_schedule(cfg)`` builds, as data.

    ``cfg`` is mlx-lm's ``lr_schedule`` config: ``name`` (``cosine_decay``,
    ``exponential_decay``, ``linear_schedule`` or ``step_decay``), ``arguments``
    (positional, the first is the peak rate), optional ``warmup`` (default 0: none) and
    ``warmup_init`` (default 0.0). As in mlx-lm, a warmup of ``w`` steps joins the main
    schedule at step ``w + 1``, so the peak is held for two updates, and the main
    schedule's step count excludes the warmup. Step counts may be whole floats (YAML reads
    ``1e3`` as 1000.0); other keys are ignored, as mlx-lm ignores them, with a warning.
    """
    owner = "from_mlx_lm_config"
    if not isinstance(cfg, dict):
        raise ValueError(f"{owner}: cfg must be a dict, got {_describe(cfg)}.")
    for key in ("name", "arguments"):
        if key not in cfg:
            raise ValueError(
                f"{owner}: lr_schedule is missing key {key!r} (mlx-lm needs 'name' and "
                f"'arguments'); got keys {list(cfg)!r}."
            )
    ignored = [key for key in cfg if key not in _MLX_LM_KEYS]
    if ignored:
        warnings.warn(
            f"{owner}: lr_schedule key(s) {ignored!r} are ignored, as mlx-lm ignores them; "
            f"it reads {list(_MLX_LM_KEYS)}.",
            stacklevel=2,
        )
    name, arguments = cfg["name"], cfg["arguments"]
    if not isinstance(name, str) or name not in _MLX_LM_STEP_ARGUMENTS:
        hint = " (it joins schedule functions: write a join in the to_dict() form)"
        raise ValueError(
            f"{owner}: name must be one of {list(_MLX_LM_STEP_ARGUMENTS)}, got {name!r}"
            f"{hint if name == 'join_schedules' else ''}."
        )
    if not isinstance(arguments, (list, tuple)) or not arguments:
        raise ValueError(
            f"{owner}: arguments must be a non-empty list, got {_describe(arguments)}."
        )
    required, allowed = _constructor_fields(_KINDS[name])
    if not len(required) <= len(arguments) <= len(allowed):
        raise ValueError(
            f"{owner}: arguments for {name} must be {allowed[: len(required)]} plus optionally "
            f"{allowed[len(required) :]}, got {len(arguments)} values: {list(arguments)!r}."
        )
    given, arguments = list(arguments), list(arguments)
    for i, value in enumerate(arguments):
        where = f"{owner}: arguments[{i}] ({name}'s {allowed[i]})"
        _refuse_number_text(where, value)
        if allowed[i] in _MLX_LM_STEP_ARGUMENTS[name]:
            arguments[i] = _mlx_lm_steps(where, value)
    try:
        main = _KINDS[name](*arguments)
    except ValueError as error:
        raise ValueError(f"{owner}: arguments {given!r}: {error}") from None
    warmup = cfg.get("warmup", 0)
    if not warmup:  # as in mlx-lm: 0, 0.0, null and false all mean no warmup
        return main
    _refuse_number_text(f"{owner}: warmup", warmup)
    warmup = _check_int(owner, "warmup", _mlx_lm_steps(f"{owner}: warmup", warmup), minimum=1)
    if warmup + 1 > MAX_STEP:
        raise ValueError(f"{owner}: warmup must be below 2**53, got {warmup}.")
    warmup_init = cfg.get("warmup_init", 0.0)
    _refuse_number_text(f"{owner}: warmup_init", warmup_init)
    warmup_init = _check_number(owner, "warmup_init", warmup_init)
    ramp = linear_schedule(warmup_init, main.init, warmup)
    return join_schedules([ramp, main], [warmup + 1])


# A phase with state, built on the helpers above (hence imported last).
from .plateau import reduce_on_plateau  # noqa: E402

_KINDS[reduce_on_plateau.name] = reduce_on_plateau
