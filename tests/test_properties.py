"""Property tests for ``mlx_sched_callbacks.schedules`` (hypothesis).

test_schedules.py checks chosen schedules at chosen steps; this file states what must hold
for every valid schedule at every valid step, and that every invalid input is refused with a
ValueError naming the argument. Tolerances are derived, never picked:

* exact equality where both sides run the same IEEE operations in the same order;
* Python path vs numpy path: ``rtol=1e-12`` plus ``1e-12`` of the schedule's magnitude
  (``end + decay * (init - end)`` cancels near 0, where a relative bound alone cannot hold);
* mx path (float32): a per-step bound counted from the float32 roundings the formula does,
  in units of the float32 unit roundoff ``U32 = 2**-24`` (see ``f32_bound``).

Tests with an ``@example`` pin bugs these properties found (and that are fixed): each
carries its counterexample, so a regression fails on every run.
"""

import copy
import json
import math
import re
import struct

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from mlx_sched_callbacks import schedules as S
from mlx_sched_callbacks.schedules import config

MAX_STEP = 2**53
U32 = 2.0**-24  # float32 unit roundoff: |fl32(x) - x| <= U32 * |x| for normal x
TINY32 = float(np.finfo(np.float32).tiny)  # below this float32 loses precision or flushes to 0
F32_STEPS = 2**20  # mx steps stay where float32 holds every step and every restart exactly

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
QUICK = settings(PROPERTY, max_examples=60)
# For the pinned-bug tests: report one exception, not a group.
PINNED_BUG = settings(QUICK, report_multiple_bugs=False)

LEAF_KINDS = (
    S.constant,
    S.linear_schedule,
    S.cosine_decay,
    S.exponential_decay,
    S.step_decay,
    S.polynomial_decay,
    S.inverse_sqrt,
    S.cosine_restarts,
)
# No transcendental function on these paths: Python and numpy do the same IEEE operations.
SAME_IEEE_PATH = (S.constant, S.linear_schedule, S.inverse_sqrt)


# -- helpers ----------------------------------------------------------------------------


def bits(x) -> bytes:
    """Exact identity of a float or a float64 array (sign of zero and NaN included)."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float64).tobytes()
    return struct.pack("<d", x)


def outcome(schedule, step):
    """The value, or the exception type, so two schedules can be compared even where one raises."""
    try:
        return bits(schedule(step))
    except Exception as error:  # noqa: BLE001 - compared, not swallowed
        return type(error)


def leaves(schedule):
    if isinstance(schedule, S.join_schedules):
        for inner in schedule.schedules:
            yield from leaves(inner)
    else:
        yield schedule


def magnitude(schedule) -> float:
    """The largest |float field| in the schedule tree (the scale its values live on)."""
    fields = ("value", "init", "end")
    return max(abs(getattr(s, f)) for s in leaves(schedule) for f in fields if hasattr(s, f))


def ulp_slack(*values, ulps=2) -> float:
    """``ulps`` units in the last place of the largest value.

    end + 1.0 * (init - end) is off init by <= 1.5 ulps (two roundings, the first of a
    difference up to twice the largest value): 2 ulps. steps * ((end - init) / steps) + init
    is off end by <= 3.5 ulps (a difference, a quotient, a product, a sum): 4 ulps.
    """
    return ulps * math.ulp(max(abs(v) for v in values))


def names(message: str, argument: str) -> bool:
    """True when ``message`` names ``argument`` as a word (``steps`` is not ``decay_steps``)."""
    return re.search(rf"(?<!\w){re.escape(argument)}(?!\w)", message) is not None


def sgdr_cycle(step: int, period: int, mult: int):
    """(cycle, start, length) of cosine_restarts by integer arithmetic only."""
    if mult == 1:
        cycle = step // period
        return cycle, cycle * period, period
    start, length, cycle = 0, period, 0
    while step >= start + length:
        start, length, cycle = start + length, length * mult, cycle + 1
    return cycle, start, length


def counts_in(schedule):
    """Every integer field and boundary in the schedule tree."""
    if isinstance(schedule, S.join_schedules):
        yield from schedule.boundaries
        for inner in schedule.schedules:
            yield from counts_in(inner)
    else:
        yield from (getattr(schedule, f) for f in schedule._fields)


def fits_int32(schedule):
    """mlx converts Python ints to the step's dtype: int32 steps need int32 counts."""
    return all(n < 2**31 for n in counts_in(schedule) if isinstance(n, int))


def piecewise(schedules, boundaries, step):
    """The join's definition, written without bisect: (schedule, step it sees)."""
    edges = [0, *boundaries]
    phase = 0
    while phase + 1 < len(edges) and step >= edges[phase + 1]:
        phase += 1
    return schedules[phase], step - edges[phase]


def per_leaf(schedule, steps: np.ndarray, leaf_fn) -> np.ndarray:
    """``leaf_fn(leaf, local_steps)`` evaluated for the leaf that is active at each step."""
    if not isinstance(schedule, S.join_schedules):
        return np.asarray(leaf_fn(schedule, steps), dtype=np.float64) + np.zeros(steps.shape)
    out = np.empty(steps.shape)
    edges = [0, *schedule.boundaries, MAX_STEP + 1]
    for inner, lo, hi in zip(schedule.schedules, edges, edges[1:]):
        inside = (steps >= lo) & (steps < hi)
        out[inside] = per_leaf(inner, steps[inside] - lo, leaf_fn)
    return out


def late_restarts(leaf, steps):
    late = isinstance(leaf, S.cosine_restarts) and leaf.period_mult > 1
    return late & (steps >= 2**52)


def leaf_scale(leaf, steps):
    """The magnitude the leaf's value is computed from at each step (cancellation scale)."""
    with np.errstate(all="ignore"):
        values = np.abs(leaf(steps.astype(np.int64)))
    return np.maximum(magnitude(leaf), np.where(np.isfinite(values), values, 0.0))


def f32_bound(schedule, steps: np.ndarray) -> np.ndarray:
    return per_leaf(schedule, steps, leaf_f32_bound)


def leaf_f32_bound(s, steps: np.ndarray) -> np.ndarray:
    """Per-step bound on |mx path (float32) - Python path (float64)|, for steps < F32_STEPS.

    Counted from the roundings each formula does; U32 per rounding of a term of size <= M,
    cos and sqrt taken with a few ulps of error, float32 casts of the float64 parameters
    included. Steps are exact in float32 here (< 2**24).
    """
    py = np.array([s(int(t)) for t in steps.ravel()]).reshape(steps.shape)
    if isinstance(s, S.constant):
        return U32 * abs(s.value) + TINY32 + 0 * py
    m = abs(s.init) + abs(getattr(s, "end", 0.0))
    if isinstance(s, S.linear_schedule):
        # cast of (end - init) / steps, product, cast of init, sum: <= 5 roundings of <= M.
        return 6 * U32 * m + TINY32 + 0 * py
    if isinstance(s, S.cosine_decay):
        # argument: 3 roundings of <= pi -> 3*pi*U; cos: <= 4 U; 1 + cos: 2 U; halved;
        # (init - end): 3 U M; product, cast of end, sum: 3 U M.  (9.4/2 + 3 + 3 + 1) < 12.
        return 12 * U32 * m + TINY32 + 0 * py
    if isinstance(s, (S.exponential_decay, S.step_decay)):
        # The rate rounded to float32 compounds: (1 + U)**n - 1 <= expm1(n U); pow (2 ulps,
        # 4 U), the cast of init and the product add 6 U; underflow below float32 tiny costs
        # |init| * TINY32.
        n = steps if isinstance(s, S.exponential_decay) else steps // s.step_size
        relative = np.expm1(n * U32) + 7 * U32
        return np.abs(py) * relative + 2 * abs(s.init) * TINY32 + TINY32
    if isinstance(s, S.polynomial_decay):
        # remaining = 1 - s / N: the quotient and the difference round (2 U absolute, 3 U
        # when N itself rounds to float32; 0 past the end, where s / N is exactly 1). The
        # power turns that into |(r +- d)**p - r**p|, which is large near the end if p < 1.
        n_exact = float(np.float32(s.decay_steps)) == s.decay_steps
        r = 1.0 - np.minimum(steps, s.decay_steps) / s.decay_steps
        d = np.where(n_exact & (steps >= s.decay_steps), 0.0, (2 if n_exact else 3) * U32)
        up = (r + d) ** s.power - r**s.power
        down = r**s.power - np.maximum(r - d, 0.0) ** s.power
        spread = np.maximum(up, down) + 3 * U32 * np.minimum(1.0, (r + d) ** s.power)
        return abs(s.init - s.end) * spread + 4 * U32 * m + TINY32
    if isinstance(s, S.inverse_sqrt):
        # step / timescale (2 U), 1 + x (1 U of 1 + x), sqrt (1.5 U), cast of init, quotient.
        return 6 * U32 * np.abs(py) + TINY32
    if isinstance(s, S.cosine_restarts):
        # As cosine_decay with an argument of up to 6 roundings (length is a float32 power),
        # plus the peak init * peak_decay**cycle compounding like exponential_decay.
        out = np.empty(steps.shape)
        for index, t in np.ndenumerate(steps):
            cycle, _, _ = sgdr_cycle(int(t), s.period, s.period_mult)
            peak = s.init * s.peak_decay**cycle
            rho = math.expm1(cycle * U32) + 4 * U32
            out[index] = (20 * U32 + rho) * (abs(peak) + abs(s.end)) + TINY32
        return out
    raise AssertionError(f"no float32 bound for {s!r}")


# -- strategies -------------------------------------------------------------------------


def signed(magnitudes):
    return st.builds(lambda m, negative: -m if negative else m, magnitudes, st.booleans())


def counts(low=1, high=MAX_STEP):
    """Step counts: mostly small (where shapes show), sometimes anywhere up to ``high``."""
    return st.one_of(
        st.integers(low, min(64, high)),
        st.integers(low, min(10**6, high)),
        st.integers(low, high),
        st.just(high),
    )


class Params:
    def __init__(self, value, rate, power, count, count0, mult, peak_decay):
        self.value, self.rate, self.power = value, rate, power
        self.count, self.count0, self.mult, self.peak_decay = count, count0, mult, peak_decay


# Anything the constructors accept: for data properties (round trips, equality). Values
# stay within half the float range, where init - end cannot overflow (such pairs are
# refused: see test_finite_parameters_give_finite_values_or_are_refused).
ANY = Params(
    value=st.floats(min_value=-8.9e307, max_value=8.9e307),
    rate=st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
    power=st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
    count=counts(),
    count0=counts(low=0),
    mult=st.one_of(st.just(1), st.integers(2, 4), st.integers(1, MAX_STEP)),
    peak_decay=st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
)
# Learning rates as used: for value properties. Rates may grow (overflow paths included).
LR = Params(
    value=st.one_of(st.just(0.0), signed(st.floats(1e-8, 1e3))),
    rate=st.one_of(st.just(1.0), st.floats(0.5, 1.0), st.floats(1e-3, 1.5)),
    power=st.one_of(st.just(1.0), st.just(2.0), st.floats(0.1, 5.0)),
    count=counts(),
    count0=counts(low=0),
    mult=st.one_of(st.just(1), st.integers(2, 4)),
    peak_decay=st.one_of(st.just(1.0), st.floats(0.1, 1.0)),
)
# For the float32 path: decaying rates (a growing one leaves float32's range), counts whose
# restarts float32 still places exactly.
F32 = Params(
    value=LR.value,
    rate=st.one_of(st.just(1.0), st.floats(0.5, 1.0), st.floats(1e-3, 1.0)),
    power=LR.power,
    count=counts(high=F32_STEPS),
    count0=counts(low=0, high=F32_STEPS),
    mult=LR.mult,
    peak_decay=LR.peak_decay,
)


@st.composite
def warmup_cosines(draw, p: Params):
    warmup = draw(p.count0)
    warmup = min(warmup, MAX_STEP - 1)
    total = min(warmup + draw(p.count), MAX_STEP)
    return S.warmup_cosine(draw(p.value), warmup, total, init=draw(p.value), end=draw(p.value))


@st.composite
def warmup_stable_decays(draw, p: Params):
    warmup = min(draw(p.count0), MAX_STEP - 1)
    stable = min(draw(p.count), MAX_STEP - warmup)
    decay = draw(st.sampled_from(["linear", "cosine"]))
    peak, init, end = draw(p.value), draw(p.value), draw(p.value)
    return S.warmup_stable_decay(peak, warmup, stable, draw(p.count), init, end, decay)


def leaf_schedules(p: Params):
    v, n = p.value, p.count
    return st.one_of(
        st.builds(S.constant, v),
        st.builds(S.linear_schedule, v, v, n),
        st.builds(S.cosine_decay, v, n, v),
        st.builds(S.exponential_decay, v, p.rate),
        st.builds(S.step_decay, v, p.rate, n),
        st.builds(S.polynomial_decay, v, n, v, p.power),
        st.builds(S.inverse_sqrt, v, n),
        st.builds(S.cosine_restarts, v, n, p.mult, p.peak_decay, v),
        warmup_cosines(p),
        warmup_stable_decays(p),
    )


def increasing(size: int, high=MAX_STEP):
    """Strictly increasing boundaries in [1, high], mostly close enough to see each phase."""
    values = st.one_of(st.integers(1, min(200, high)), st.integers(1, high))
    return st.lists(values, min_size=size, max_size=size, unique=True).map(sorted)


@st.composite
def joins(draw, children, high=MAX_STEP):
    pieces = draw(st.lists(children, min_size=1, max_size=3))
    return S.join_schedules(pieces, draw(increasing(len(pieces) - 1, high)))


def schedules(p: Params, depth=3, high=MAX_STEP):
    """Every kind, joins nested up to ``depth`` levels."""
    if depth == 0:
        return leaf_schedules(p)
    return st.one_of(leaf_schedules(p), joins(schedules(p, depth - 1, high), high))


def steps_for(schedule, high=MAX_STEP):
    """Steps worth looking at: 0, ``high``, and each edge (+-1) of every phase, of every
    leaf's shape (its steps, decay_steps, ... counted from where its phase starts) and of
    the first restarts."""
    edges = {0, high}

    def visit(s, offset):
        if isinstance(s, S.join_schedules):
            for inner, lo in zip(s.schedules, [0, *s.boundaries]):
                edges.update(offset + lo + d for d in (-1, 0, 1))
                visit(inner, offset + lo)
            return
        for f in ("steps", "decay_steps", "step_size", "timescale", "period"):
            if hasattr(s, f):
                edges.update(offset + getattr(s, f) + d for d in (-1, 0, 1))
        if isinstance(s, S.cosine_restarts):
            start, length = 0, s.period
            for _ in range(12):
                edges.update(offset + start + d for d in (-1, 0, 1))
                start, length = start + length, length * s.period_mult

    visit(schedule, 0)
    return sorted(t for t in edges if 0 <= t <= high)


# -- data: JSON, repr, equality ---------------------------------------------------------


@PROPERTY
@given(schedule=schedules(ANY), steps=st.lists(st.integers(0, MAX_STEP), max_size=6))
def test_round_trip_through_json_and_repr_is_exact(schedule, steps):
    spec = schedule.to_dict()
    text = json.dumps(spec, allow_nan=False)  # plain JSON: no NaN/inf, no numpy scalars
    rebuilt = S.from_dict(json.loads(text))
    assert rebuilt == schedule and rebuilt.to_dict() == spec
    assert rebuilt.fingerprint() == schedule.fingerprint() and hash(rebuilt) == hash(schedule)
    assert json.dumps(rebuilt.to_dict(), allow_nan=False) == text
    assert eval(repr(schedule), vars(S)) == schedule  # noqa: S307 - repr is Python source
    probe = [0, 1, MAX_STEP, *steps]
    assert [outcome(rebuilt, t) for t in probe] == [outcome(schedule, t) for t in probe]
    array = np.array(probe, dtype=np.int64)
    with np.errstate(all="ignore"):
        assert bits(rebuilt(array)) == bits(schedule(array))


SMALL_FLOATS = st.sampled_from([0.5, 1, 1.0, np.float64(0.5), np.float32(0.5), 2, np.int64(2)])
SMALL_COUNTS = st.sampled_from([1, 2, np.int64(2), np.uint8(2), np.int32(1)])
SMALL = Params(
    value=SMALL_FLOATS,
    rate=SMALL_FLOATS,
    power=SMALL_FLOATS,
    count=SMALL_COUNTS,
    count0=st.sampled_from([0, 1, np.int64(2)]),
    mult=SMALL_COUNTS,
    peak_decay=SMALL_FLOATS,
)


@PROPERTY
@given(a=schedules(SMALL, depth=1), b=schedules(SMALL, depth=1))
def test_equal_schedules_have_equal_fingerprints_and_hashes(a, b):
    # A tiny domain (with numpy scalars standing in for Python numbers) so that equal pairs
    # are common; -0.0 is left out, see test_signed_zero_keeps_hash_consistent_with_equality.
    json.dumps(a.to_dict(), allow_nan=False)  # numpy scalars were converted on the way in
    if a == b:
        assert a.fingerprint() == b.fingerprint() and hash(a) == hash(b)
        assert a.values(8).tobytes() == b.values(8).tobytes()
    else:
        assert a.fingerprint() != b.fingerprint() and a.to_dict() != b.to_dict()


def negate_zeros(spec):
    if isinstance(spec, dict):
        return {k: negate_zeros(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [negate_zeros(v) for v in spec]
    return -0.0 if isinstance(spec, float) and spec == 0 else spec


@PINNED_BUG
@given(schedule=schedules(LR, depth=1))
@example(schedule=S.constant(0.0))
def test_signed_zero_keeps_hash_consistent_with_equality(schedule):
    flipped = S.from_dict(negate_zeros(schedule.to_dict()))
    if flipped == schedule:
        assert flipped.fingerprint() == schedule.fingerprint()
        assert hash(flipped) == hash(schedule)


# -- the three evaluation paths agree ---------------------------------------------------


@PROPERTY
@given(
    schedule=schedules(LR),
    extra=st.lists(st.integers(0, MAX_STEP), max_size=8),
    dtype=st.sampled_from([np.int64, np.uint64]),
)
def test_python_and_numpy_paths_agree(schedule, extra, dtype):
    steps = np.array(sorted(set(steps_for(schedule)[:200]) | set(extra)), dtype=dtype)
    python = np.array([schedule(int(t)) for t in steps])
    with np.errstate(all="ignore"):
        vector = schedule(steps)
        grid = schedule(steps.reshape(1, -1, 1))
        scalar = schedule(np.array(steps[-1], dtype=dtype))
    assert vector.dtype == np.float64 and vector.shape == steps.shape
    assert bits(grid.ravel()) == bits(vector)  # shape does not change a value
    assert scalar.shape == () and bits(scalar) == bits(vector[-1:])
    assert schedule(steps[:0]).shape == (0,)
    if all(isinstance(s, SAME_IEEE_PATH) for s in leaves(schedule)):
        assert bits(vector) == bits(python)
        return
    # Restarts of period_mult > 1 above 2**52 are left out: see
    # test_cosine_restarts_numpy_path_restarts_on_time_above_2_52.
    finite = np.isfinite(python) & (per_leaf(schedule, steps, late_restarts) == 0)
    np.testing.assert_array_equal(np.isnan(vector), np.isnan(python))
    np.testing.assert_array_equal(vector[np.isinf(python)], python[np.isinf(python)])
    scale = per_leaf(schedule, steps, leaf_scale)
    error = np.abs(vector[finite] - python[finite])
    bound = 1e-12 * (np.abs(python[finite]) + scale[finite])
    assert np.all(error <= bound), steps[finite][np.argmax(error - bound)]


@PROPERTY
@given(schedule=schedules(LR), count=st.integers(0, 300))
def test_values_is_the_numpy_path_over_a_range(schedule, count):
    with np.errstate(all="ignore"):
        values = schedule.values(count)
        expected = schedule(np.arange(count))
    assert values.shape == (count,) and bits(values) == bits(expected)
    for t in (0, count // 2, count):
        assert outcome(schedule, np.int64(t)) == outcome(schedule, t)
        assert outcome(schedule, np.uint64(t)) == outcome(schedule, t)


@PROPERTY
@given(
    schedule=schedules(F32, high=F32_STEPS),
    extra=st.lists(st.integers(0, F32_STEPS - 1), max_size=8),
    dtype=st.sampled_from([mx.uint64, mx.int64]),
)
def test_mx_path_is_the_python_value_within_float32_rounding(schedule, extra, dtype):
    steps = np.array(sorted(set(steps_for(schedule, F32_STEPS - 1)[:200]) | set(extra)))
    python = np.array([schedule(int(t)) for t in steps])
    out = schedule(mx.array(steps, dtype=dtype))
    assert isinstance(out, mx.array) and out.dtype == mx.float32 and out.shape == steps.shape
    got = np.array(out, dtype=np.float64)
    bound = f32_bound(schedule, steps)
    error = np.abs(got - python)
    worst = int(np.argmax(error - bound))
    assert np.all(error <= bound), (
        f"step {steps[worst]}: mx {got[worst]!r} vs python {python[worst]!r}, "
        f"error {error[worst]:.3g} > bound {bound[worst]:.3g} "
        f"({error[worst] / max(magnitude(schedule), TINY32) / U32:.1f} U32 of the magnitude)"
    )


@PINNED_BUG
@given(period=st.integers(1, 10**6), mult=st.integers(2, 5))
@example(period=2_200_097_521_921, mult=2)
def test_cosine_restarts_numpy_path_restarts_on_time_above_2_52(period, mult):
    s = S.cosine_restarts(1.0, period, mult)
    starts = [0]
    while starts[-1] + period * mult ** (len(starts) - 1) <= MAX_STEP:
        starts.append(starts[-1] + period * mult ** (len(starts) - 1))
    steps = np.array([t + d for t in starts[-3:] for d in (-1, 0, 1) if 0 <= t + d <= MAX_STEP])
    python = np.array([s(int(t)) for t in steps])
    np.testing.assert_allclose(s(steps), python, rtol=1e-12, atol=1e-12)


# -- joins are their piecewise definition -----------------------------------------------


@PROPERTY
@given(
    pieces=st.lists(schedules(LR, depth=1), min_size=1, max_size=4),
    data=st.data(),
)
def test_join_is_piecewise_at_and_around_every_boundary(pieces, data):
    boundaries = data.draw(increasing(len(pieces) - 1))
    joined = S.join_schedules(pieces, boundaries)
    probe = {0, MAX_STEP} | {b + d for b in boundaries for d in (-1, 0, 1)}
    probe |= set(data.draw(st.lists(st.integers(0, MAX_STEP), max_size=4)))
    probe = sorted(t for t in probe if 0 <= t <= MAX_STEP)
    expected = []
    for t in probe:
        piece, seen = piecewise(pieces, boundaries, t)
        assert outcome(joined, t) == outcome(piece, seen), f"step {t}"
        with np.errstate(all="ignore"):
            expected.append(piece(np.array([seen])))
    with np.errstate(all="ignore"):
        assert bits(joined(np.array(probe))) == bits(np.concatenate(expected))
    small = [t for t in probe if t < F32_STEPS]
    if fits_int32(joined):
        dtype = data.draw(st.sampled_from([mx.uint64, mx.int64, mx.int32, mx.uint32]))
    else:
        dtype = data.draw(st.sampled_from([mx.uint64, mx.int64]))
    got = np.array(joined(mx.array(small, dtype=dtype)))
    for t, value in zip(small, got):
        piece, seen = piecewise(pieces, boundaries, t)
        assert bits(float(value)) == bits(float(piece(mx.array(seen, dtype=dtype)))), t


# -- shapes -----------------------------------------------------------------------------

SHAPE_STEPS = st.lists(st.integers(0, MAX_STEP), min_size=1, max_size=30)


def shape_probe(count, extra):
    """Sorted steps: 0, around the end of the shape, and random ones."""
    probe = {0, 1, count - 1, count, count + 1, 2 * count, *extra}
    return sorted(t for t in probe if 0 <= t <= MAX_STEP)


def assert_monotone(values, direction):
    """Non-increasing for direction < 0, non-decreasing for > 0, anything for 0."""
    diffs = np.diff(np.asarray(values)) * np.sign(direction)
    assert np.all(diffs >= 0), (values, direction)


@PROPERTY
@given(init=LR.value, end=LR.value, steps=counts(), extra=SHAPE_STEPS)
def test_linear_schedule_shape(init, end, steps, extra):
    s = S.linear_schedule(init, end, steps)
    probe = shape_probe(steps, extra)
    values = [s(t) for t in probe]
    assert s(0) == init
    assert_monotone(values, end - init)
    assert all(v == s(steps) for t, v in zip(probe, values) if t >= steps)  # flat after
    slack = ulp_slack(init, end, ulps=4)
    assert abs(s(steps) - end) <= slack
    assert all(min(init, end) - slack <= v <= max(init, end) + slack for v in values)


@PINNED_BUG
@given(init=LR.value, end=LR.value, steps=counts())
@example(init=0.3, end=0.1, steps=3)
def test_linear_schedule_ends_exactly_at_end_and_stays_in_range(init, end, steps):
    s = S.linear_schedule(init, end, steps)
    assert s(steps) == end and s(min(steps + 1, MAX_STEP)) == end
    assert min(init, end) <= s(steps - 1) <= max(init, end)


@PROPERTY
@given(init=LR.value, end=LR.value, decay_steps=counts(), extra=SHAPE_STEPS)
def test_cosine_decay_shape(init, end, decay_steps, extra):
    s = S.cosine_decay(init, decay_steps, end)
    probe = shape_probe(decay_steps, extra)
    values = [s(t) for t in probe]
    assert_monotone(values, end - init)
    assert all(v == end for t, v in zip(probe, values) if t >= decay_steps)  # exactly end
    slack = ulp_slack(init, end)
    assert abs(s(0) - init) <= slack
    assert all(min(init, end) - slack <= v <= max(init, end) + slack for v in values)
    if decay_steps % 2 == 0:  # half way the cosine is at its midpoint
        assert s(decay_steps // 2) == pytest.approx((init + end) / 2, rel=1e-12, abs=slack)


@PINNED_BUG
@given(init=LR.value, end=LR.value, decay_steps=counts())
@example(init=0.7052833998544062, end=0.1944001701948989, decay_steps=10)
@example(init=0.1, end=0.7, decay_steps=10)
def test_cosine_and_polynomial_decay_start_exactly_at_init(init, end, decay_steps):
    for s in (S.cosine_decay(init, decay_steps, end), S.polynomial_decay(init, decay_steps, end)):
        assert s(0) == init, s
    peaked = S.warmup_cosine(init, 5, 5 + min(decay_steps, MAX_STEP - 5), end=end)
    assert peaked(5) == init


@PROPERTY
@given(
    init=LR.value,
    end=LR.value,
    decay_steps=counts(),
    power=LR.power,
    extra=SHAPE_STEPS,
)
def test_polynomial_decay_shape(init, end, decay_steps, power, extra):
    s = S.polynomial_decay(init, decay_steps, end, power)
    probe = shape_probe(decay_steps, extra)
    values = [s(t) for t in probe]
    assert_monotone(values, end - init)
    assert all(v == end for t, v in zip(probe, values) if t >= decay_steps)
    slack = ulp_slack(init, end)
    assert abs(s(0) - init) <= slack
    assert all(min(init, end) - slack <= v <= max(init, end) + slack for v in values)
    if power == 1.0:  # a straight line
        linear = S.linear_schedule(init, end, decay_steps)
        for t in probe:
            scale = max(abs(init), abs(end))
            assert s(t) == pytest.approx(linear(t), rel=1e-12, abs=1e-12 * scale)


@PROPERTY
@given(init=LR.value, rate=LR.rate, a=st.integers(0, 800), b=st.integers(0, 800))
def test_exponential_decay_shape(init, rate, a, b):
    s = S.exponential_decay(init, rate)
    assert s(0) == init
    lo, hi = sorted((a, b))
    assert_monotone([abs(s(lo)), abs(s(hi))], rate - 1.0)
    # init * r**(a + b) == init * r**a * r**b, to the rounding of two powers and a product.
    whole, split = s(a + b), s(a) * rate**b
    if min(abs(whole), abs(s(a)), rate**b) > 1e-290:  # all normal: relative rounding holds
        assert whole == pytest.approx(split, rel=1e-12)


@PROPERTY
@given(init=LR.value, rate=LR.rate, step_size=counts(), data=st.data())
def test_step_decay_is_flat_within_each_step_and_drops_at_each_multiple(
    init, rate, step_size, data
):
    s, exponential = S.step_decay(init, rate, step_size), S.exponential_decay(init, rate)
    k = data.draw(st.integers(0, min(3000, MAX_STEP // step_size)))
    start, last = k * step_size, min(k * step_size + step_size - 1, MAX_STEP)
    inside = data.draw(st.integers(start, last))
    assert bits(s(start)) == bits(s(inside)) == bits(s(last)) == bits(exponential(k))
    if k:
        assert bits(s(start - 1)) == bits(exponential(k - 1))


@PROPERTY
@given(init=LR.value, timescale=counts(high=MAX_STEP // 15), extra=SHAPE_STEPS)
def test_inverse_sqrt_shape(init, timescale, extra):
    s = S.inverse_sqrt(init, timescale)
    assert s(0) == init
    assert s(3 * timescale) == init / 2 and s(15 * timescale) == init / 4  # exact in IEEE
    values = [abs(s(t)) for t in sorted({0, *extra})]
    assert_monotone(values, -1)


@PROPERTY
@given(
    init=LR.value,
    period=counts(),
    mult=LR.mult,
    peak_decay=LR.peak_decay,
    end=LR.value,
    data=st.data(),
)
def test_cosine_restarts_restart_at_each_cycle_start(init, period, mult, peak_decay, end, data):
    s = S.cosine_restarts(init, period, mult, peak_decay, end)
    starts = [0]  # cycle starts by integer arithmetic, up to 2**53
    while len(starts) < 60 and starts[-1] + period * mult ** (len(starts) - 1) <= MAX_STEP:
        starts.append(starts[-1] + period * mult ** (len(starts) - 1))
    cycle = data.draw(st.integers(0, len(starts) - 1), label="cycle")
    start, length = starts[cycle], period * mult**cycle
    assert sgdr_cycle(start, period, mult) == (cycle, start, length)
    peak = init * peak_decay**cycle
    slack, scale = ulp_slack(peak, end), max(abs(peak), abs(end))
    assert abs(s(start) - peak) <= slack
    last = min(start + length - 1, MAX_STEP)
    into = data.draw(st.integers(start, last), label="into")
    probe = sorted({start, into, last})
    values = [s(t) for t in probe]
    assert_monotone(values, end - peak)  # one cycle is one cosine_decay
    for t, v in zip(probe, values):
        assert min(peak, end) - slack <= v <= max(peak, end) + slack
        if length <= MAX_STEP:
            expected = S.cosine_decay(peak, length, end)(t - start)
            assert v == pytest.approx(expected, rel=1e-12, abs=1e-12 * scale)
    if cycle + 1 < len(starts):  # the next cycle restarts at its own peak
        assert s(starts[cycle + 1]) == pytest.approx(
            init * peak_decay ** (cycle + 1), rel=1e-12, abs=1e-12 * scale
        )


@PROPERTY
@given(
    kind=st.sampled_from(["warmup_cosine", "linear", "cosine"]),
    peak=LR.value,
    init=LR.value,
    end=LR.value,
    warmup=counts(low=0),
    stable=counts(),
    decay_steps=counts(),
    extra=SHAPE_STEPS,
)
def test_warmup_builders_rise_hold_and_fall(
    kind, peak, init, end, warmup, stable, decay_steps, extra
):
    # Arguments drawn here, not read back from the schedule: the test checks the builders'
    # arithmetic (where the decay starts and ends), not only the shapes of the parts.
    warmup = min(warmup, MAX_STEP - 1)
    if kind == "warmup_cosine":
        stable, decay_steps = 0, min(decay_steps, MAX_STEP - warmup)
        s = S.warmup_cosine(peak, warmup, warmup + decay_steps, init=init, end=end)
    else:
        stable = min(stable, MAX_STEP - warmup)
        s = S.warmup_stable_decay(peak, warmup, stable, decay_steps, init, end, decay=kind)
    decay_start, total = warmup + stable, warmup + stable + decay_steps
    if warmup:
        assert s(0) == init
        rise = [s(t) for t in sorted({0, warmup - 1, *[t % warmup for t in extra]})]
        assert_monotone(rise, peak - init)
    assert abs(s(warmup) - peak) <= ulp_slack(peak, end)  # exact once cosine_decay is fixed
    if stable:  # warmup_stable_decay holds the peak exactly
        held = {warmup, decay_start - 1, *[t for t in extra if warmup <= t < decay_start]}
        assert all(s(t) == peak for t in held)
    fall = sorted({decay_start, min(total, MAX_STEP), *[t for t in extra if t >= decay_start]})
    assert_monotone([s(t) for t in fall], end - peak)
    if total <= MAX_STEP:
        if kind == "linear":  # see test_linear_schedule_ends_exactly_at_end_and_stays_in_range
            assert abs(s(total) - end) <= ulp_slack(peak, end, ulps=4)
        else:
            assert s(total) == end
        assert all(s(t) == s(total) for t in extra if t >= total)


# -- every valid input gives a value ----------------------------------------------------


def grows(schedule):
    return any(isinstance(s, S.cosine_restarts) and s.peak_decay > 1 for s in leaves(schedule))


@PROPERTY
@given(schedule=schedules(ANY), step=st.one_of(st.integers(0, MAX_STEP), st.just(MAX_STEP)))
def test_every_valid_schedule_gives_a_float_at_every_valid_step(schedule, step):
    # Growing restarts are left out, see test_cosine_restarts_with_growing_peaks_do_not_raise.
    assume(not grows(schedule))
    assert type(schedule(step)) is float
    with np.errstate(all="ignore"):
        assert schedule(np.array([step], dtype=np.uint64)).dtype == np.float64


@PINNED_BUG
@given(peak_decay=st.floats(1.5, 1e300), step=st.integers(0, MAX_STEP))
@example(peak_decay=10.0, step=400)
def test_cosine_restarts_with_growing_peaks_do_not_raise(peak_decay, step):
    s = S.cosine_restarts(1.0, 1, 1, peak_decay)
    assert type(s(step)) is float


@PINNED_BUG
@given(init=st.floats(1e308, 1.7e308), end=st.floats(-1.7e308, -1e308), n=counts())
@example(init=1e308, end=-1e308, n=10)
def test_finite_parameters_give_finite_values_or_are_refused(init, end, n):
    for make in (
        lambda: S.linear_schedule(init, end, n),
        lambda: S.cosine_decay(init, n, end),
        lambda: S.polynomial_decay(init, n, end),
    ):
        if math.isfinite(init - end):
            s = make()
            assert all(math.isfinite(s(t)) for t in (0, n // 2, n)), s
        else:
            with pytest.raises(ValueError, match=r"init - end must be a finite number"):
                make()


# -- invalid input is refused, naming the argument --------------------------------------

NUMBER, POSITIVE, COUNT, COUNT0 = "number", "positive", "count", "count0"
SIGNATURES = {
    S.constant: {"value": NUMBER},
    S.linear_schedule: {"init": NUMBER, "end": NUMBER, "steps": COUNT},
    S.cosine_decay: {"init": NUMBER, "decay_steps": COUNT, "end": NUMBER},
    S.exponential_decay: {"init": NUMBER, "decay_rate": POSITIVE},
    S.step_decay: {"init": NUMBER, "decay_rate": POSITIVE, "step_size": COUNT},
    S.polynomial_decay: {"init": NUMBER, "decay_steps": COUNT, "end": NUMBER, "power": POSITIVE},
    S.inverse_sqrt: {"init": NUMBER, "timescale": COUNT},
    S.cosine_restarts: {
        "init": NUMBER,
        "period": COUNT,
        "period_mult": COUNT,
        "peak_decay": POSITIVE,
        "end": NUMBER,
    },
    # The arguments these two check under their own name (peak and init: see below).
    S.warmup_cosine: {"warmup_steps": COUNT0, "total_steps": COUNT, "end": NUMBER},
    S.warmup_stable_decay: {
        "warmup_steps": COUNT0,
        "stable_steps": COUNT,
        "decay_steps": COUNT,
        "end": NUMBER,
    },
}
VALID = {NUMBER: st.floats(-1.0, 1.0), POSITIVE: st.floats(0.5, 1.0), COUNT: st.integers(1, 50)}
VALID[COUNT0] = st.integers(0, 50)

NOT_NUMBERS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, np.nan, np.float32("nan"), np.inf]),
    st.sampled_from([None, True, False, np.True_, "0.1", b"1", [0.1], {}, 1j, (1,)]),
    st.text(max_size=5),
)
NOT_POSITIVE = st.one_of(NOT_NUMBERS, st.just(0.0), st.just(-0.0), st.floats(max_value=0.0))


def not_counts(minimum):
    return st.one_of(
        st.integers(max_value=minimum - 1),
        st.integers(MAX_STEP + 1, 2**70),
        st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), np.uint64(2**63)]),
        st.floats(),  # 5.0 is not a step count either
        st.sampled_from([np.float64(3.0), 2.0**53, None, True, False, "5", [5]]),
    )


BAD = {NUMBER: NOT_NUMBERS, POSITIVE: NOT_POSITIVE, COUNT: not_counts(1), COUNT0: not_counts(0)}


@PROPERTY
@given(
    kind=st.sampled_from(list(SIGNATURES)),
    data=st.data(),
)
def test_bad_arguments_raise_value_error_naming_the_argument(kind, data):
    signature = SIGNATURES[kind]
    arguments = {f: data.draw(VALID[c], label=f) for f, c in signature.items()}
    if kind is S.warmup_cosine:
        arguments = {"peak": 1.0, **arguments, "total_steps": arguments["warmup_steps"] + 5}
    if kind is S.warmup_stable_decay:
        arguments["peak"] = 1.0
    kind(**arguments)  # the unmodified arguments are valid
    field = data.draw(st.sampled_from(sorted(signature)), label="field")
    arguments[field] = data.draw(BAD[signature[field]], label="bad")
    with pytest.raises(ValueError) as info:
        kind(**arguments)
    assert names(str(info.value), field), str(info.value)


@QUICK
@given(data=st.data())
def test_counts_are_accepted_up_to_2_53_in_any_integer_type(data):
    kind = data.draw(st.sampled_from(list(LEAF_KINDS)))
    signature = SIGNATURES[kind]
    arguments = {f: data.draw(VALID[c]) for f, c in signature.items()}
    counts_ = [f for f, c in signature.items() if c == COUNT]
    if counts_:
        field = data.draw(st.sampled_from(counts_))
        value = data.draw(st.sampled_from([2**53, 2**53 - 1, 1]))
        cast = data.draw(st.sampled_from([int, np.int64, np.uint64]))
        arguments[field] = cast(value)
    s = kind(**arguments)
    plain = kind(**{f: v.item() if isinstance(v, np.generic) else v for f, v in arguments.items()})
    assert s == plain and json.dumps(s.to_dict(), allow_nan=False)


@PINNED_BUG
@given(
    kind=st.sampled_from(list(LEAF_KINDS)),
    index=st.integers(0, 4),
    huge=st.integers(2**1024, 2**1100) | st.integers(-(2**1100), -(2**1024)),
)
@example(kind=S.constant, index=0, huge=10**400)
def test_ints_beyond_float_range_are_refused_with_value_error(kind, index, huge):
    signature = SIGNATURES[kind]
    arguments = {f: {NUMBER: 0.5, POSITIVE: 0.5}.get(c, 5) for f, c in signature.items()}
    numbers = [f for f, c in signature.items() if c in (NUMBER, POSITIVE)]
    field = numbers[index % len(numbers)]
    kind(**arguments)  # valid before
    arguments[field] = huge
    with pytest.raises(ValueError) as info:
        kind(**arguments)
    assert names(str(info.value), field)


@PINNED_BUG
@given(maker=st.sampled_from(["cosine", "wsd"]), bad=NOT_NUMBERS, warmup=st.integers(0, 3))
@example(maker="cosine", bad=math.nan, warmup=1)
def test_warmup_builders_name_peak(maker, bad, warmup):
    with pytest.raises(ValueError) as info:
        if maker == "cosine":
            S.warmup_cosine(bad, warmup_steps=warmup, total_steps=10)
        else:
            S.warmup_stable_decay(bad, warmup_steps=warmup, stable_steps=5, decay_steps=5)
    assert names(str(info.value), "peak"), str(info.value)


@PINNED_BUG
@given(maker=st.sampled_from(["cosine", "wsd"]), bad=NOT_NUMBERS, warmup=st.integers(0, 3))
@example(maker="cosine", bad=math.nan, warmup=0)
def test_warmup_builders_check_init_even_without_warmup(maker, bad, warmup):
    with pytest.raises(ValueError) as info:
        if maker == "cosine":
            S.warmup_cosine(1.0, warmup_steps=warmup, total_steps=10, init=bad)
        else:
            S.warmup_stable_decay(1.0, warmup, stable_steps=5, decay_steps=5, init=bad)
    assert names(str(info.value), "init"), str(info.value)


@PROPERTY
@given(
    pieces=st.lists(st.builds(S.constant, st.floats(0, 1)), min_size=1, max_size=4),
    data=st.data(),
)
def test_join_boundaries_must_fit_and_strictly_increase(pieces, data):
    good = data.draw(increasing(len(pieces) - 1))
    S.join_schedules(pieces, good)
    fault = data.draw(st.sampled_from(["count", "order", "value"]))
    if fault == "count":
        size = data.draw(st.integers(0, 6).filter(lambda n: n != len(pieces) - 1))
        bad = data.draw(increasing(size))
        expected = "boundaries"
    elif fault == "order":
        assume(len(good) >= 2)
        i = data.draw(st.integers(1, len(good) - 1))
        bad = list(good)
        # equal to its predecessor, or below it
        bad[i] = data.draw(st.one_of(st.just(bad[i - 1]), st.integers(1, bad[i - 1])))
        expected = "strictly increasing"
    else:
        assume(good)
        i = data.draw(st.integers(0, len(good) - 1))
        bad = list(good)
        bad[i] = data.draw(not_counts(1))
        expected = f"boundaries[{i}]"
    with pytest.raises(ValueError) as info:
        S.join_schedules(pieces, bad)
    assert expected in str(info.value)


@QUICK
@given(
    pieces=st.one_of(
        st.just([]),
        st.lists(
            st.sampled_from([None, 0.1, "constant", {"name": "constant", "value": 1.0}]),
            min_size=1,
            max_size=3,
        ),
        st.sampled_from([None, "abc", S.constant(1.0)]),
    )
)
def test_join_refuses_what_is_not_a_list_of_schedules(pieces):
    size = len(pieces) if isinstance(pieces, list) else 1
    with pytest.raises(ValueError) as info:
        S.join_schedules(pieces, list(range(1, size)))
    assert names(str(info.value), "schedules") or "schedules[" in str(info.value)


def dict_nodes(spec, path=()):
    """Every schedule dict in a spec, with the path of keys that leads to it."""
    yield path, spec
    if spec.get("name") == "join_schedules":
        for i, inner in enumerate(spec["schedules"]):
            yield from dict_nodes(inner, (*path, "schedules", i))


def at_path(spec, path):
    for key in path:
        spec = spec[key]
    return spec


REQUIRED = {cls.name: config._constructor_fields(cls)[0] for cls in config._KINDS.values()}
ALLOWED = {cls.name: list(cls._fields) for cls in config._KINDS.values()}
DEFAULTS = {
    "end": 0.0,
    "power": 1.0,
    "period_mult": 1,
    "peak_decay": 1.0,
}
MISSPELL = [
    lambda f: f + "s",
    lambda f: f.upper(),
    lambda f: f[:-1],
    lambda f: f.replace("_", "-") if "_" in f else "_" + f,
    lambda f: f.replace("e", "a", 1) if "e" in f else f + "_",
]


@PROPERTY
@given(schedule=schedules(LR, depth=2), data=st.data())
def test_from_dict_refuses_damaged_specs_naming_the_field(schedule, data):
    spec = schedule.to_dict()
    path, _ = data.draw(st.sampled_from(list(dict_nodes(spec))), label="node")
    damaged = copy.deepcopy(spec)
    node = at_path(damaged, path)
    name = node["name"]
    fields = ALLOWED[name]
    fault = data.draw(st.sampled_from(["missing", "extra", "misspelt", "name", "no name"]))
    if fault == "missing":
        field = data.draw(st.sampled_from(fields))
        del node[field]
        if field not in REQUIRED[name]:  # an optional field falls back to its default
            rebuilt = at_path(S.from_dict(damaged).to_dict(), path)
            assert rebuilt[field] == DEFAULTS[field]
            return
        expected = [field]
    elif fault == "extra":
        extra = data.draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in node))
        node[extra] = data.draw(st.one_of(st.none(), st.floats(), st.text()))
        expected = [extra]
    elif fault == "misspelt":
        field = data.draw(st.sampled_from(fields))
        typo = data.draw(st.sampled_from(MISSPELL))(field)
        assume(typo not in node and typo != "name")
        node[typo] = node.pop(field)
        expected = [field, typo]  # missing (if required) or unknown (if optional)
    elif fault == "name":
        node["name"] = data.draw(
            st.one_of(st.text(max_size=20), st.integers(), st.none(), st.floats()).filter(
                lambda n: n not in config._KINDS
            )
        )
        expected = ["name"]
    else:
        del node["name"]
        expected = ["name"]
    with pytest.raises(ValueError) as info:
        S.from_dict(damaged)
    message = str(info.value)
    assert any(names(message, e) or repr(e) in message for e in expected), message
    for i in path[1::2]:  # a nested fault says where it is
        assert f"schedules[{i}]" in message


@PROPERTY
@given(schedule=schedules(LR, depth=2), data=st.data())
def test_from_dict_refuses_bad_values_naming_the_field(schedule, data):
    spec = schedule.to_dict()
    path, _ = data.draw(st.sampled_from(list(dict_nodes(spec))), label="node")
    damaged = copy.deepcopy(spec)
    node = at_path(damaged, path)
    if node["name"] == "join_schedules":
        field = "boundaries" if node["boundaries"] else "schedules"
        node[field] = data.draw(st.one_of(st.none(), st.text(), st.integers(), st.floats()))
    else:
        cls = config._KINDS[node["name"]]
        field = data.draw(st.sampled_from(cls._fields))
        node[field] = data.draw(BAD[SIGNATURES[cls][field]])
    with pytest.raises(ValueError) as info:
        S.from_dict(damaged)
    assert names(str(info.value), field), str(info.value)


@PINNED_BUG
@given(name=st.one_of(st.lists(st.text(), max_size=2), st.dictionaries(st.text(), st.text())))
@example(name=["constant"])
def test_from_dict_refuses_unhashable_names_with_value_error(name):
    with pytest.raises(ValueError, match="name"):
        S.from_dict({"name": name, "value": 1.0})
    with pytest.raises(ValueError, match=r"field names must be strings, got \[1\]"):
        S.from_dict({"name": "constant", "value": 1.0, 1: 0, "x": 0})


@PINNED_BUG
@given(
    name=st.sampled_from(["cosine_decay", "exponential_decay", "linear_schedule", "step_decay"]),
    count=st.integers(1, 6),
)
@example(name="cosine_decay", count=1)
def test_from_mlx_lm_config_refuses_wrong_argument_counts(name, count):
    needed = {"cosine_decay": (2, 3), "exponential_decay": (2, 2)}.get(name, (3, 3))
    assume(not needed[0] <= count <= needed[1])
    with pytest.raises(ValueError, match="arguments"):
        S.from_mlx_lm_config({"name": name, "arguments": [0.5] * count})
    with pytest.raises(ValueError, match="warmup_init"):
        S.from_mlx_lm_config(
            {"name": "cosine_decay", "arguments": [0.1, 10], "warmup": 2, "warmup_init": "x"}
        )


@PROPERTY
@given(schedule=schedules(LR, depth=2), name=st.one_of(st.text(), st.integers(), st.none()))
def test_from_dict_refuses_unknown_names_and_non_dicts(schedule, name):
    assume(name not in config._KINDS)
    with pytest.raises(ValueError, match="name"):
        S.from_dict({**schedule.to_dict(), "name": name})
    for not_a_dict in (schedule, schedule.to_dict().items(), json.dumps(schedule.to_dict())):
        with pytest.raises(ValueError, match="spec"):
            S.from_dict(not_a_dict)


BAD_STEPS = st.one_of(
    st.integers(max_value=-1),
    st.integers(MAX_STEP + 1, 2**70),
    st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, 2**64, np.uint64(2**63), np.int64(-1)]),
    st.floats(),
    st.sampled_from([3.0, np.float64(3.0), np.float32(1.0), None, True, False, "3", [3]]),
)


@PROPERTY
@given(schedule=schedules(LR, depth=1), step=BAD_STEPS)
def test_bad_steps_raise_value_error_naming_step(schedule, step):
    with pytest.raises(ValueError) as info:
        schedule(step)
    assert names(str(info.value), "step"), str(info.value)


@PROPERTY
@given(
    schedule=schedules(LR, depth=1),
    good=st.lists(st.integers(0, MAX_STEP), max_size=5),
    bad=st.one_of(
        st.integers(-(2**63), -1).map(lambda t: np.array([t], dtype=np.int64)),
        st.integers(MAX_STEP + 1, 2**64 - 1).map(lambda t: np.array([t], dtype=np.uint64)),
        st.floats(0, 100).map(lambda t: np.array([t])),
        st.just(np.array([True])),
    ),
)
def test_bad_step_arrays_raise_value_error_naming_step(schedule, good, bad):
    steps = np.concatenate([np.array(good, dtype=bad.dtype), bad])
    with pytest.raises(ValueError) as info:
        schedule(steps)
    message = str(info.value)
    assert names(message, "step") or names(message, "steps"), message
