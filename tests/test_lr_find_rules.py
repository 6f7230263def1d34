"""The numbers of the learning-rate range test: ramp, smoothing, stop rule, suggestion rules,
and the mlx-lm schedule a suggestion turns into. Pure numpy, no training."""

import itertools
import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_sched_callbacks import schedules
from mlx_sched_callbacks.lr_find import (
    DivergenceWatch,
    Smoother,
    lr_schedule_yaml,
    ramp_rates,
    smooth,
    stop_index,
    suggest,
    suggested_schedule,
)
from mlx_sched_callbacks.lr_find.curve import valley_index

BETA = 0.98

# -- the ramp --------------------------------------------------------------


def test_exponential_ramp_ends_and_ratios():
    rates = ramp_rates(1e-7, 1.0, 100)
    assert rates.dtype == np.float64 and rates.shape == (100,)
    assert rates[0] == 1e-7 and rates[-1] == 1.0
    ratio = (1.0 / 1e-7) ** (1 / 99)
    np.testing.assert_allclose(rates[1:] / rates[:-1], ratio, rtol=1e-12, atol=0)
    i = np.arange(100)
    np.testing.assert_allclose(rates, 1e-7 * 1e7 ** (i / 99), rtol=1e-12, atol=0)


def test_linear_ramp_ends_and_steps():
    rates = ramp_rates(0.01, 0.5, 50, mode="linear")
    assert rates[0] == 0.01 and rates[-1] == 0.5
    np.testing.assert_allclose(np.diff(rates), (0.5 - 0.01) / 49, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"min_lr": 1, "max_lr": 0.1}, "min_lr must be below max_lr, got min_lr=1 and max_lr=0.1."),
        ({"min_lr": 0.1, "max_lr": 0.1}, "min_lr must be below max_lr"),
        ({"min_lr": 0.0}, "min_lr must be a positive finite number, got min_lr=0.0"),
        ({"min_lr": -1e-3}, "min_lr=-0.001"),
        ({"max_lr": math.inf}, "max_lr must be a positive finite number, got max_lr=inf"),
        ({"max_lr": math.nan}, "max_lr=nan"),
        ({"max_lr": "1"}, "max_lr must be a positive finite number, got max_lr='1'"),
        ({"num_steps": 9}, "num_steps must be an integer >= 10, got num_steps=9"),
        ({"num_steps": 100.0}, "num_steps=100.0"),
        ({"num_steps": True}, "num_steps=True"),
        ({"mode": "cosine"}, "mode must be one of ['exponential', 'linear'], got mode='cosine'"),
        ({"min_lr": 1.0, "max_lr": 1.0 + 1e-15}, "too close to give 100 distinct rates"),
    ],
)
def test_ramp_refuses_bad_input(kwargs, named):
    arguments = {"min_lr": 1e-7, "max_lr": 1.0, "num_steps": 100, **kwargs}
    with pytest.raises(ValueError) as error:
        ramp_rates(**arguments)
    assert named in str(error.value)


# -- smoothing -------------------------------------------------------------


def closed_form_smoothing(losses, beta):
    """``sum_k (1 - beta) beta^(i - k) loss_k / (1 - beta^(i + 1))``, term by term."""
    out = []
    for i in range(len(losses)):
        weighted = sum((1 - beta) * beta ** (i - k) * losses[k] for k in range(i + 1))
        out.append(weighted / (1 - beta ** (i + 1)))
    return out


def test_smoothing_matches_the_closed_form():
    losses = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0, 8.0, 9.0, 7.0, 9.0]
    np.testing.assert_allclose(
        smooth(losses), closed_form_smoothing(losses, BETA), rtol=1e-13, atol=0
    )
    np.testing.assert_allclose(
        smooth(losses, beta=0.5), closed_form_smoothing(losses, 0.5), rtol=1e-13, atol=0
    )


def test_smoothing_is_debiased_from_the_first_loss():
    # Debiased, a constant loss smooths to itself at once; Lightning's extra power of
    # beta would give 0.505 * 2.0 first.
    np.testing.assert_allclose(smooth([2.0] * 50), 2.0, rtol=1e-13, atol=0)
    smoother = Smoother()
    assert smoother.update(7.0) == pytest.approx(7.0, rel=1e-15)


def test_a_non_finite_loss_poisons_every_later_smoothed_loss():
    smoothed = smooth([1.0, 1.0, math.nan, 1.0])
    assert np.isfinite(smoothed[:2]).all() and np.isnan(smoothed[2:]).all()


# -- the stop rule ---------------------------------------------------------


def first_divergence(losses, divergence):
    """The stop index, computed independently: closed-form smoothing, then a scan."""
    smoothed = closed_form_smoothing(losses, BETA)
    for i in range(len(losses)):
        if not math.isfinite(losses[i]):
            return i
        if i and 0 < min(smoothed[:i]) and smoothed[i] > divergence * min(smoothed[:i]):
            return i
    return None


def test_divergence_stops_at_the_first_update_above_four_times_the_best():
    # Falls to about 0.2, then grows by 30% per update.
    losses = [2.0 * 0.9**i for i in range(25)] + [0.15 * 1.3**i for i in range(1, 40)]
    expected = first_divergence(losses, 4.0)
    assert expected is not None and 30 < expected < len(losses) - 1
    assert stop_index(losses) == expected
    smoothed = smooth(losses)
    best_before = smoothed[:expected].min()
    assert smoothed[expected] > 4 * best_before >= smoothed[expected - 1]
    assert stop_index(losses, divergence=8.0) == first_divergence(losses, 8.0) > expected


def test_non_finite_loss_stops_and_none_disables_only_the_ratio():
    assert stop_index([1.0, 1.0, math.nan, 1.0]) == 2
    assert stop_index([1.0, 0.5, math.inf]) == 2
    rising = [1.0 * 1.5**i for i in range(30)]
    assert stop_index(rising) is not None
    assert stop_index(rising, divergence=None) is None
    assert stop_index([*rising, -math.inf], divergence=None) == 30


def test_ratio_rule_is_off_while_the_best_loss_is_not_positive():
    # 4 * best bounds nothing when best <= 0: -0.5 > 4 * -1.0 is no divergence.
    assert stop_index([-1.0] * 10 + [-0.5] * 10) is None
    watch = DivergenceWatch(4.0)
    assert [watch.check(x, x) for x in (0.0, 1.0, 5.0)] == [None, None, None]


@pytest.mark.parametrize("divergence", [1.0, 0.5, -4.0, math.inf, math.nan, "4", True])
def test_divergence_refuses_bad_input(divergence):
    with pytest.raises(ValueError, match=r"divergence must be a finite number > 1 or None, got"):
        DivergenceWatch(divergence)


# -- the suggestion rules on curves with known answers ---------------------

# 30 planned updates: the rules skip 30 // 10 = 3 points, read indices 3..24, skip 25..29.
RATES = ramp_rates(1e-4, 1.0, 30)


def clean_valley() -> np.ndarray:
    """A curve whose three answers are worked out by hand below."""
    curve = np.full(30, 100.0)  # 25..29: the blow-up, left out
    curve[0:3] = 6.0  # left out (first 10%)
    curve[3:5] = 5.0  # window 0, 1: flat
    falls = [0.1] * 7 + [1.0, 1.5] + [0.1] * 5  # from index 5 on, one drop per update
    curve[5] = 4.9
    for i, drop in enumerate(falls):
        curve[6 + i] = curve[5 + i] - drop
    curve[20:25] = [2.0, 2.5, 3.0, 3.5, 4.0]  # rising again
    return curve


def test_clean_valley_answers():
    curve = clean_valley()
    assert curve[12] == pytest.approx(4.2) and curve[13] == pytest.approx(3.2)
    assert curve[14] == pytest.approx(1.7) and curve[19] == pytest.approx(1.2)
    found = suggest(RATES, curve, num_steps=30)
    # valley: the longest strictly decreasing subsequence is 5.0 (index 3 or 4) then
    # indices 5..19, L = 16, first ending at 19 (window index 16); fastai's start is
    # 16 - 16 = 0 and its index 0 + int(16/3) + int(16/3/2) = 5 + 2 = 7: update index 10.
    assert found["valley"].index == 10 and found["valley"].rate == RATES[10]
    # steep: the central difference at 13 spans both big drops (-2.5 over two steps).
    assert found["steep"].index == 13 and found["steep"].rate == RATES[13]
    # minimum: the lowest loss, 1.2 at index 19; a tenth of its rate.
    assert found["minimum"].index == 19 and found["minimum"].rate == RATES[19] / 10


def test_an_early_spike_inside_the_first_ten_percent_is_ignored():
    curve = clean_valley()
    curve[0:3] = [0.01, 50.0, 0.001]  # lowest, steepest and longest-falling, if read
    found = suggest(RATES, curve, num_steps=30)
    assert {k: s.index for k, s in found.items()} == {"valley": 10, "steep": 13, "minimum": 19}


def test_the_last_five_points_are_ignored():
    curve = clean_valley()
    curve[25:30] = [0.0, -1.0, -2.0, -3.0, -4.0]  # a long fall to the lowest values, if read
    found = suggest(RATES, curve, num_steps=30)
    assert {k: s.index for k, s in found.items()} == {"valley": 10, "steep": 13, "minimum": 19}


@pytest.mark.parametrize("after", ["nan", "finite"])
def test_a_nan_tail_is_cut_before_the_rules_run(after):
    curve = clean_valley()
    curve[16] = np.nan  # the window is cut to indices 3..15, whatever comes after
    if after == "nan":
        curve[17:] = np.nan
    found = suggest(RATES, curve, num_steps=30)
    # valley: L = 1 + 11 (indices 5..15), ending at window index 12; 0 + 4 + 2 = 6 -> 9.
    assert found["valley"].index == 9 and found["valley"].rate == RATES[9]
    assert found["steep"].index == 13
    assert found["minimum"].index == 15 and found["minimum"].rate == RATES[15] / 10


def test_the_skip_uses_the_planned_length_when_the_run_stopped_early():
    # 100 planned, 40 made: the first 10 points are left out, not 4.
    rates = ramp_rates(1e-6, 1.0, 100)[:40]
    curve = np.linspace(5.0, 1.0, 40)
    curve[:10] = 0.5  # would be the minimum if only 40 // 10 = 4 were skipped
    found = suggest(rates, curve, num_steps=100)
    assert found["minimum"].index == 34  # the last point before the 5 left out


@pytest.mark.parametrize("curve", [np.linspace(1.0, 3.0, 30), np.full(30, 2.0)])
def test_a_curve_that_never_falls_has_no_valley_and_no_steep(curve):
    found = suggest(RATES, curve, num_steps=30)
    assert found["valley"].rate is None and found["valley"].index is None
    assert found["steep"].rate is None and found["steep"].index is None
    assert found["minimum"].index == 3 and found["minimum"].rate == RATES[3] / 10


def test_short_curves_give_none_instead_of_crashing():
    rates = ramp_rates(1e-4, 1.0, 10)  # skip 1 at the start, 5 at the end
    for length in range(0, 7):  # nothing left to read
        found = suggest(rates[:length], np.linspace(3, 1, length), num_steps=10)
        assert all(s.rate is None and s.index is None for s in found.values()), length
    one = suggest(rates[:7], np.linspace(3, 1, 7), num_steps=10)
    assert (one["valley"].rate, one["steep"].rate, one["minimum"].index) == (None, None, 1)
    two = suggest(rates[:8], np.linspace(3, 1, 8), num_steps=10)
    # Two falling points: fastai's valley index is 1 - 2 + 0 + 0 = -1 (its lrs[-1] is the
    # highest rate); here None. The one slope there is negative: steep is the first point.
    assert two["valley"].rate is None
    assert two["steep"].index == 1 and two["minimum"].index == 2
    everything_nan = suggest(rates, np.full(10, np.nan), num_steps=10)
    assert all(s.rate is None for s in everything_nan.values())


def test_suggest_refuses_curves_of_different_lengths():
    with pytest.raises(ValueError, match=r"shapes \(30,\) and \(29,\)"):
        suggest(RATES, np.ones(29))


# -- valley against independent references ---------------------------------


def fastai_valley_reference(losses):
    """fastai's valley, said in plain loops: its tie-breaking, its ``start``, its index.

    Returns ``(index, length)``: the index may be -1, where fastai's ``lrs[-1]`` wraps.
    """
    lengths = [1] * len(losses)
    best_end = start = 0  # both start at 0 and move only when a longer run appears
    for i in range(1, len(losses)):
        for j in range(i):
            if losses[i] < losses[j]:
                lengths[i] = max(lengths[i], lengths[j] + 1)
            if lengths[i] > lengths[best_end]:
                best_end, start = i, i - lengths[i]
    third = (best_end - start) / 3
    return start + int(third) + int(third / 2), lengths[best_end]


def brute_force_valley(losses):
    """From every subsequence: the longest strictly decreasing length and the first end."""
    best_length, best_end = 1, 0
    for size in range(2, len(losses) + 1):
        ends = [
            chosen[-1]
            for chosen in itertools.combinations(range(len(losses)), size)
            if all(losses[a] > losses[b] for a, b in itertools.pairwise(chosen))
        ]
        if ends:
            best_length, best_end = size, min(ends)
    index = best_end - best_length + int(best_length / 3) + int(best_length / 3 / 2)
    return None if best_length == 1 or index < 0 else index


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=9))
def test_valley_against_brute_force_on_short_curves(values):
    losses = np.array(values, dtype=np.float64)
    assert valley_index(losses) == brute_force_valley(values)


def test_valley_matches_fastai_on_random_curves_through_the_whole_pipeline():
    rng = np.random.default_rng(20261201)
    compared = 0
    for trial in range(400):
        num_steps = int(rng.integers(10, 150))
        made = int(rng.integers(num_steps // 10 + 8, num_steps + 1))
        rates = ramp_rates(1e-7, 10.0, num_steps)[:made]
        x = np.log10(rates)
        if trial % 2:  # a range test's shape: flat, falling, blowing up, with noise
            raw = 2 - 1.5 / (1 + np.exp(-2 * (x + 3.5))) + np.exp(3 * (x - 0.3))
            raw = raw + rng.normal(0, 0.2, made)
        else:  # a few levels: many ties
            raw = rng.integers(0, 4, made).astype(np.float64)
        smoothed = smooth(raw)
        if trial % 5 == 0:
            smoothed[int(rng.integers(made // 2, made)) :] = np.nan
        # fastai: lrs[num_it // 10 : -5], cut at the first NaN, valley on what is left.
        window_rates = rates[num_steps // 10 : -5]
        window = smoothed[num_steps // 10 : -5]
        nans = np.flatnonzero(np.isnan(window))
        if len(nans):
            window_rates, window = window_rates[: nans[0]], window[: nans[0]]
        ours = suggest(rates, smoothed, num_steps=num_steps)["valley"]
        if len(window) == 0:
            assert ours.rate is None
            continue
        index, length = fastai_valley_reference(list(window))
        if length == 1 or index < 0:
            assert ours.rate is None and ours.index is None
            continue
        assert ours.rate == float(window_rates[index])
        assert ours.index == num_steps // 10 + index
        compared += 1
    assert compared > 300


def test_valley_is_quadratic_not_exponential_on_a_long_curve():
    rng = np.random.default_rng(1)
    losses = rng.normal(size=600)
    index, length = fastai_valley_reference(list(losses))
    assert valley_index(losses) == index and length > 10


# -- the schedule a suggestion becomes -------------------------------------


def test_suggested_schedule_is_mlx_lms_form_and_round_trips():
    config = suggested_schedule(3e-4, 1000)
    assert config == {
        "name": "cosine_decay",
        "arguments": [3e-4, 950, 3e-5],
        "warmup": 50,
        "warmup_init": 0.0,
    }
    ours = schedules.from_mlx_lm_config(config)
    assert ours == schedules.join_schedules(
        [schedules.linear_schedule(0.0, 3e-4, 50), schedules.cosine_decay(3e-4, 950, 3e-5)],
        [51],
    )
    import mlx.core as mx
    from mlx_lm.tuner.utils import build_schedule

    theirs = build_schedule(config)
    steps = [0, 1, 25, 50, 51, 52, 500, 1000, 1001, 1200]
    for step in steps:
        assert ours(step) == pytest.approx(theirs(mx.array(step)).item(), rel=1e-6, abs=1e-12)


def test_suggested_schedule_without_warmup_and_with_an_end():
    config = suggested_schedule(0.01, 200, warmup=0, end=0.0)
    assert config == {"name": "cosine_decay", "arguments": [0.01, 200, 0.0]}
    assert schedules.from_mlx_lm_config(config) == schedules.cosine_decay(0.01, 200, 0.0)


@pytest.mark.parametrize(
    "args, kwargs, named",
    [
        ((0.0, 100), {}, "peak must be a finite number > 0, got peak=0.0"),
        ((None, 100), {}, "peak=None"),
        ((1e-3, 0), {}, "iters must be an integer >= 1, got iters=0"),
        ((1e-3, 100.0), {}, "iters=100.0"),
        ((1e-3, 100, 100), {}, "warmup must be in [0, iters) = [0, 100)"),
        ((1e-3, 100, -1), {}, "warmup=-1"),
        ((1e-3, 100), {"end": 1.0}, "end must not exceed peak=0.001, got end=1.0"),
        ((1e-3, 100), {"warmup_init": -1.0}, "warmup_init=-1.0"),
    ],
)
def test_suggested_schedule_refuses_bad_input(args, kwargs, named):
    with pytest.raises(ValueError) as error:
        suggested_schedule(*args, **kwargs)
    assert named in str(error.value)


@pytest.mark.parametrize("peak", [1e-5, 3e-4, 0.1, 2.5e-7, 1.0, 1e20])
def test_yaml_block_reads_back_to_the_same_dict(peak):
    config = suggested_schedule(peak, 1000, warmup=30, warmup_init=1e-8)
    text = lr_schedule_yaml(config)
    assert text.startswith("lr_schedule:\n  name: cosine_decay\n  arguments: [")
    loaded = yaml.safe_load(text)
    assert loaded == {"lr_schedule": config}
    assert all(
        type(a) is type(b) for a, b in zip(loaded["lr_schedule"]["arguments"], config["arguments"])
    )


def test_yaml_writes_floats_that_yaml_1_1_reads_as_floats():
    text = lr_schedule_yaml({"name": "cosine_decay", "arguments": [1e-05, 10, 1e-06]})
    assert "arguments: [1.0e-05, 10, 1.0e-06]" in text
    with pytest.raises(ValueError, match="finite"):
        lr_schedule_yaml({"name": "cosine_decay", "arguments": [math.inf, 10]})
