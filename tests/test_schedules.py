import json
import math

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx_lm.tuner.utils import build_schedule

from mlx_sched_callbacks import schedules as S

STEPS = np.arange(0, 10_001)

# (ours, mlx's, the formula mlx documents in float64, peak)
MLX_FIVE = [
    (
        S.linear_schedule(0.0, 0.1, steps=1000),
        optim.linear_schedule(0.0, 0.1, steps=1000),
        lambda s: 0.0 + (0.1 - 0.0) * np.minimum(s, 1000) / 1000,
        0.1,
    ),
    (
        S.linear_schedule(1e-3, 1e-5, steps=7),
        optim.linear_schedule(1e-3, 1e-5, steps=7),
        lambda s: 1e-3 + (1e-5 - 1e-3) * np.minimum(s, 7) / 7,
        1e-3,
    ),
    (
        S.cosine_decay(0.1, 2000, end=1e-4),
        optim.cosine_decay(0.1, 2000, end=1e-4),
        lambda s: 1e-4 + 0.5 * (1 + np.cos(np.pi * np.minimum(s, 2000) / 2000)) * (0.1 - 1e-4),
        0.1,
    ),
    (
        S.exponential_decay(0.1, 0.999),
        optim.exponential_decay(0.1, 0.999),
        lambda s: 0.1 * 0.999 ** s.astype(np.float64),
        0.1,
    ),
    (
        S.step_decay(0.1, 0.5, 700),
        optim.step_decay(0.1, 0.5, 700),
        lambda s: 0.1 * 0.5 ** (s // 700).astype(np.float64),
        0.1,
    ),
    (
        S.join_schedules([S.linear_schedule(0, 0.1, steps=10), S.cosine_decay(0.1, 200)], [10]),
        optim.join_schedules(
            [optim.linear_schedule(0, 0.1, steps=10), optim.cosine_decay(0.1, 200)], [10]
        ),
        lambda s: np.where(
            s < 10,
            0.1 * np.minimum(s, 10) / 10,
            0.05 * (1 + np.cos(np.pi * np.minimum(s - 10, 200) / 200)),
        ),
        0.1,
    ),
]
MLX_IDS = ["linear", "linear-down", "cosine", "exponential", "step", "join"]


@pytest.mark.parametrize("ours, theirs, formula, peak", MLX_FIVE, ids=MLX_IDS)
def test_mlx_five_follow_the_documented_formula_in_double(ours, theirs, formula, peak):
    expected = formula(STEPS)
    python_values = np.array([ours(int(s)) for s in STEPS])
    np.testing.assert_allclose(python_values, expected, rtol=1e-9, atol=0)
    np.testing.assert_allclose(ours(STEPS), expected, rtol=1e-9, atol=0)


@pytest.mark.parametrize("ours, theirs, formula, peak", MLX_FIVE, ids=MLX_IDS)
def test_mlx_five_agree_with_mlx_float32(ours, theirs, formula, peak):
    mlx_values = np.array(theirs(mx.array(STEPS)), dtype=np.float64)
    if ours.name == "exponential_decay":
        # mlx computes with the rate rounded to float32; so does ours given that rate.
        ours = S.exponential_decay(ours.init, float(np.float32(ours.decay_rate)))
    assert np.abs(ours(STEPS) - mlx_values).max() <= 1e-6 * peak
    # The mx path is the same float32 computation as mlx's.
    np.testing.assert_array_equal(
        np.array(ours(mx.array(STEPS))), np.array(theirs(mx.array(STEPS)))
    )


def test_exponential_decay_follows_the_formula_where_mlx_drifts():
    ours, theirs = S.exponential_decay(1.0, 0.9999), optim.exponential_decay(1.0, 0.9999)
    step = 10_000
    exact = 0.9999**step
    assert ours(step) == pytest.approx(exact, rel=1e-12)
    assert abs(theirs(mx.array(step)).item() - exact) > 1e-5  # mlx rounds the rate to float32


def test_call_types():
    s = S.cosine_decay(0.1, 100)
    assert type(s(3)) is float
    assert type(s(np.int64(3))) is float
    out = s(mx.array(3, mx.uint64))
    assert isinstance(out, mx.array) and out.dtype == mx.float32 and out.shape == ()
    vec = s(np.arange(5))
    assert vec.dtype == np.float64 and vec.shape == (5,)
    np.testing.assert_array_equal(s.values(5), vec)


@pytest.mark.parametrize("bad", [-1, 2**53 + 1, 1.5, "3", None, True])
def test_call_refuses_bad_steps(bad):
    with pytest.raises(ValueError, match="step"):
        S.cosine_decay(0.1, 100)(bad)


def test_our_schedule_drives_an_mlx_optimizer_like_mlx_does():
    ours = S.join_schedules([S.linear_schedule(0, 0.1, steps=10), S.cosine_decay(0.1, 200)], [10])
    theirs = optim.join_schedules(
        [optim.linear_schedule(0, 0.1, steps=10), optim.cosine_decay(0.1, 200)], [10]
    )
    a, b = optim.SGD(learning_rate=ours), optim.SGD(learning_rate=theirs)
    for _ in range(30):
        a.update({}, {})
        b.update({}, {})
        assert a.learning_rate.item() == b.learning_rate.item()


# -- the schedules beyond mlx's five ----------------------------------------------------


def test_constant():
    assert S.constant(3e-4)(0) == 3e-4 and S.constant(3e-4)(10**9) == 3e-4
    np.testing.assert_array_equal(S.constant(2.0)(np.arange(3)), [2.0, 2.0, 2.0])
    assert S.constant(2.0)(mx.array([1, 2])).tolist() == [2.0, 2.0]


def test_polynomial_decay_edges_and_shape():
    s = S.polynomial_decay(1.0, 100, end=0.1, power=2.0)
    assert s(0) == 1.0
    assert s(100) == 0.1 and s(1000) == 0.1
    assert s(50) == 0.1 + 0.9 * 0.5**2
    values = s.values(101)
    assert np.all(np.diff(values) < 0)
    assert S.polynomial_decay(1.0, 10)(5) == 0.5  # power 1 is linear


def test_inverse_sqrt():
    s = S.inverse_sqrt(1.0, timescale=10)
    assert s(0) == 1.0
    assert s(30) == 0.5  # 1 / sqrt(1 + 30 / 10)
    assert np.all(np.diff(s.values(1000)) < 0)


def reference_sgdr(step, init, period, mult, decay, end):
    start, length, cycle = 0, period, 0
    while step >= start + length:
        start, length, cycle = start + length, length * mult, cycle + 1
    peak = init * decay**cycle
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (step - start) / length))


@pytest.mark.parametrize("mult, decay", [(1, 1.0), (1, 0.5), (2, 0.8), (3, 1.0)])
def test_cosine_restarts_matches_a_step_by_step_reference(mult, decay):
    s = S.cosine_restarts(0.1, period=7, period_mult=mult, peak_decay=decay, end=1e-3)
    steps = np.arange(0, 3000)
    expected = np.array([reference_sgdr(int(t), 0.1, 7, mult, decay, 1e-3) for t in steps])
    np.testing.assert_allclose([s(int(t)) for t in steps], expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(s(steps), expected, rtol=1e-9, atol=0)
    assert np.abs(np.array(s(mx.array(steps))) - expected).max() < 1e-6 * 0.1


def test_cosine_restarts_restart_at_the_peak():
    s = S.cosine_restarts(1.0, period=10, period_mult=2, peak_decay=0.5)
    assert s(0) == 1.0 and s(10) == 0.5 and s(30) == 0.25 and s(70) == 0.125
    assert s(9) < s(10) and s(29) < s(30)


def test_warmup_cosine_total_includes_warmup():
    s = S.warmup_cosine(1e-3, warmup_steps=100, total_steps=1000, init=1e-6, end=1e-5)
    assert s(0) == 1e-6
    assert s(100) == 1e-3
    assert s(1000) == pytest.approx(1e-5, rel=1e-12) and s(5000) == pytest.approx(1e-5, rel=1e-12)
    values = s.values(1001)
    assert np.all(np.diff(values[:101]) > 0) and np.all(np.diff(values[100:]) < 0)
    assert S.warmup_cosine(1.0, 0, 10) == S.cosine_decay(1.0, 10)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_warmup_stable_decay(decay):
    s = S.warmup_stable_decay(1.0, 10, 100, 20, init=0.1, end=0.01, decay=decay)
    assert s(0) == 0.1 and s(10) == 1.0 and s(110) == 1.0
    assert s(130) == pytest.approx(0.01, rel=1e-12) and s(10**6) == pytest.approx(0.01, rel=1e-12)
    values = s.values(131)
    assert np.all(np.diff(values[:11]) > 0)
    assert np.all(values[10:111] == 1.0)
    assert np.all(np.diff(values[110:]) < 0)


def test_join_equals_its_pieces_at_and_around_boundaries():
    pieces = [S.linear_schedule(0, 1, 5), S.constant(1.0), S.exponential_decay(1.0, 0.5)]
    j = S.join_schedules(pieces, [5, 8])
    for step in range(0, 20):
        phase = 0 if step < 5 else 1 if step < 8 else 2
        offset = [0, 5, 8][phase]
        assert j(step) == pieces[phase](step - offset)
    np.testing.assert_array_equal(j(np.arange(20)), [j(int(t)) for t in range(20)])


# -- data: to_dict, from_dict, repr, equality -------------------------------------------

ALL_KINDS = [
    S.constant(0.5),
    S.linear_schedule(0, 0.1, 10),
    S.cosine_decay(0.1, 200, end=1e-3),
    S.exponential_decay(0.1, 0.99),
    S.step_decay(0.1, 0.5, 30),
    S.polynomial_decay(0.1, 100, end=0.01, power=0.5),
    S.inverse_sqrt(0.1, 50),
    S.cosine_restarts(0.1, 20, 2, 0.9, 1e-4),
    S.warmup_cosine(0.1, 10, 100),
    S.warmup_stable_decay(0.1, 10, 50, 20, decay="cosine"),
    S.join_schedules(
        [
            S.linear_schedule(0, 0.1, 10),
            S.join_schedules([S.constant(0.1), S.cosine_decay(0.1, 40)], [20]),
            S.constant(1e-4),
        ],
        [10, 70],
    ),
]


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=lambda s: s.name)
def test_round_trip_through_json(schedule):
    rebuilt = S.from_dict(json.loads(json.dumps(schedule.to_dict())))
    assert rebuilt == schedule
    assert rebuilt.fingerprint() == schedule.fingerprint()
    steps = np.arange(0, 300)
    np.testing.assert_array_equal(rebuilt(steps), schedule(steps))
    assert [rebuilt(int(t)) for t in steps] == [schedule(int(t)) for t in steps]


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=lambda s: s.name)
def test_repr_rebuilds_the_schedule(schedule):
    assert eval(repr(schedule), vars(S)) == schedule


def test_equality_and_fingerprint_see_every_field():
    a = S.cosine_decay(0.1, 200)
    assert a == S.cosine_decay(0.1, 200) and hash(a) == hash(S.cosine_decay(0.1, 200))
    assert a != S.cosine_decay(0.1, 201) and a != S.cosine_decay(0.1, 200, end=1e-9)
    assert a.fingerprint() != S.cosine_decay(0.1, 201).fingerprint()
    assert a != S.linear_schedule(0.1, 0.0, 200)


# -- mlx-lm's lr_schedule config --------------------------------------------------------

MLX_LM_CONFIGS = [
    {"name": "cosine_decay", "arguments": [1e-5, 1000, 1e-7], "warmup": 100, "warmup_init": 1e-7},
    {"name": "cosine_decay", "arguments": [2e-4, 500]},
    {"name": "linear_schedule", "arguments": [1e-4, 1e-6, 300], "warmup": 10},
    {"name": "exponential_decay", "arguments": [1e-3, 0.999], "warmup": 5},
    {"name": "step_decay", "arguments": [1e-3, 0.5, 100]},
]


@pytest.mark.parametrize("cfg", MLX_LM_CONFIGS, ids=lambda c: c["name"])
def test_from_mlx_lm_config_matches_build_schedule(cfg):
    ours, theirs = S.from_mlx_lm_config(cfg), build_schedule(cfg)
    steps = np.arange(0, 2000)
    mlx_values = np.array(theirs(mx.array(steps)))
    np.testing.assert_array_equal(np.array(ours(mx.array(steps))), mlx_values)
    if cfg["name"] != "exponential_decay":  # mlx's float32 rate drifts; see above
        peak = cfg["arguments"][0]
        assert np.abs(ours(steps) - mlx_values).max() <= 1e-6 * peak


def test_from_mlx_lm_config_keeps_the_peak_for_two_updates():
    s = S.from_mlx_lm_config({"name": "cosine_decay", "arguments": [1.0, 100], "warmup": 10})
    assert s(10) == 1.0 and s(11) == 1.0 and s(12) < 1.0


# -- bad arguments ----------------------------------------------------------------------

BAD = [
    (lambda: S.linear_schedule(0, 1, 0), "steps"),
    (lambda: S.linear_schedule(0, 1, -5), "steps"),
    (lambda: S.cosine_decay(0.1, 0), "decay_steps"),
    (lambda: S.cosine_decay(float("nan"), 10), "init"),
    (lambda: S.cosine_decay(0.1, 10, end=float("inf")), "end"),
    (lambda: S.cosine_decay("0.1", 10), "init"),
    (lambda: S.cosine_decay(0.1, 2**63), "decay_steps"),
    (lambda: S.cosine_decay(0.1, 10.0), "decay_steps"),
    (lambda: S.step_decay(0.1, 0.5, 0), "step_size"),
    (lambda: S.exponential_decay(0.1, 0.0), "decay_rate"),
    (lambda: S.polynomial_decay(0.1, 10, power=-1), "power"),
    (lambda: S.inverse_sqrt(0.1, 0), "timescale"),
    (lambda: S.cosine_restarts(0.1, 10, period_mult=0), "period_mult"),
    (lambda: S.join_schedules([S.constant(1), S.constant(2)], []), "boundaries"),
    (lambda: S.join_schedules([S.constant(1), S.constant(2)], [3, 4]), "boundaries"),
    (lambda: S.join_schedules([S.constant(1)] * 3, [5, 5]), "strictly increasing"),
    (lambda: S.join_schedules([S.constant(1)] * 3, [6, 5]), "strictly increasing"),
    (lambda: S.join_schedules([S.constant(1)] * 2, [0]), r"boundaries\[0\]"),
    (lambda: S.join_schedules([], []), "schedules"),
    (lambda: S.join_schedules([optim.cosine_decay(0.1, 10)], []), r"schedules\[0\]"),
    (lambda: S.warmup_cosine(0.1, 100, 100), "total_steps"),
    (lambda: S.warmup_stable_decay(0.1, 1, 1, 1, decay="sqrt"), "decay"),
    (lambda: S.from_dict({"name": "cosine", "init": 0.1}), "name"),
    (lambda: S.from_dict({"name": "cosine_decay", "init": 0.1}), "decay_steps"),
    (lambda: S.from_dict({"name": "cosine_decay", "init": 0.1, "decay_steps": 5, "x": 1}), "x"),
    (lambda: S.from_dict([1, 2]), "spec"),
    (
        lambda: S.from_dict(
            {"name": "join_schedules", "schedules": [{"name": "constant"}], "boundaries": []}
        ),
        r"schedules\[0\].*value",
    ),
    (lambda: S.from_mlx_lm_config({"name": "cosine_decay"}), "arguments"),
    (lambda: S.from_mlx_lm_config({"name": "nope", "arguments": [1]}), "name"),
]


@pytest.mark.parametrize("make, argument", BAD)
def test_bad_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument) as info:
        make()
    assert "got" in str(info.value) or "missing" in str(info.value) or "unknown" in str(info.value)
