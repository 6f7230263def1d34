"""``from_mlx_lm_config`` against mlx-lm's own ``build_schedule``, on the configs mlx-lm reads.

Configs are written as YAML text and read with mlx-lm's own loader, as ``mlx_lm.lora`` reads
them. mlx computes in float32 and we compute in double, so values are compared within
``2 * float32 eps * peak``: the linear and cosine formulas round four or five times, each by at
most ``eps / 2`` of a value no larger than the peak (measured: at most 1.27 eps * peak). For
``exponential_decay`` and ``step_decay``, mlx also rounds the decay rate to float32 and raises
that to the power ``k``, so the difference grows with ``k``; that part is computed exactly by
evaluating our schedule again with mlx's float32 rate, and added to the tolerance.
"""

import math
import random
import re
import warnings

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
import yaml
from mlx_lm.lora import yaml_loader
from mlx_lm.tuner.utils import build_schedule

from mlx_sched_callbacks import schedules as S

EPS32 = float(np.finfo(np.float32).eps)
SUPPORTED = ["cosine_decay", "exponential_decay", "linear_schedule", "step_decay"]


def theirs_at(cfg, steps):
    """mlx-lm's rates at ``steps``, with the optimizer's uint64 step counter."""
    rates = build_schedule(cfg)(mx.array(np.asarray(steps), dtype=mx.uint64))
    return np.array(rates, dtype=np.float64)


def peak_of(cfg):
    """The largest magnitude the schedule can take (every schedule here moves between these)."""
    name, arguments = cfg["name"], cfg["arguments"]
    values = [arguments[0]]
    if name == "cosine_decay" and len(arguments) > 2:
        values.append(arguments[2])
    if name == "linear_schedule":
        values.append(arguments[1])
    if cfg.get("warmup"):
        values.append(cfg.get("warmup_init", 0.0))
    return max(abs(float(v)) for v in values)


def tolerance(cfg, steps, ours):
    tol = 2 * EPS32 * peak_of(cfg)
    if cfg["name"] in ("exponential_decay", "step_decay"):
        rate32 = float(np.float32(cfg["arguments"][1]))
        arguments32 = [cfg["arguments"][0], rate32, *cfg["arguments"][2:]]
        ours32 = S.from_mlx_lm_config({**cfg, "arguments": arguments32})
        tol = tol + np.abs(ours(steps) - ours32(steps))
    return tol


def assert_close_to_mlx_lm(cfg, steps, label=""):
    ours = S.from_mlx_lm_config(cfg)
    steps = np.asarray(steps, dtype=np.int64)
    theirs = theirs_at(cfg, steps)
    tol = np.broadcast_to(tolerance(cfg, steps, ours), steps.shape)
    values = ours(steps)
    error = np.abs(values - theirs)
    worst = int(np.argmax(error - tol))
    assert (error <= tol).all(), (
        f"{label}\n{cfg}: step {steps[worst]}: ours {values[worst]!r}, "
        f"mlx-lm {theirs[worst]!r}, |diff| {error[worst]:.3g} > {tol[worst]:.3g}"
    )
    # The callback's path: a Python int step, a Python float rate.
    some = slice(None, None, max(1, len(steps) // 50))
    scalar = np.array([ours(int(s)) for s in steps[some]])
    assert (np.abs(scalar - theirs[some]) <= tol[some]).all()
    # Handed to an mlx optimizer (an mx.array step), ours computes mlx's float32 formula.
    as_mlx = np.array(ours(mx.array(steps, dtype=mx.uint64)), dtype=np.float64)
    np.testing.assert_array_equal(as_mlx, theirs, err_msg=f"{label}\n{cfg}")
    return ours


# -- mlx-lm's own TestScheduleConfig (tests/test_finetune.py), ported ----------------------


def test_join():
    config = {"name": "cosine_decay", "warmup": 100, "arguments": [1e-5, 100]}
    ours = S.from_mlx_lm_config(config)
    assert ours(0) == 0.0
    assert ours(101) == 1e-5  # the cosine's first step: its init, exactly
    optimizer = optim.Adam(learning_rate=ours)
    mlx_lm_optimizer = optim.Adam(learning_rate=build_schedule(config))
    for updates in (100, 100):
        for _ in range(updates):
            optimizer.update({}, {})
            mlx_lm_optimizer.update({}, {})
        # The rate of the last update, taken at the step count before it.
        used = optimizer.step.item() - 1
        assert optimizer.learning_rate.item() == mlx_lm_optimizer.learning_rate.item()
        assert abs(optimizer.learning_rate.item() - ours(used)) <= 2 * EPS32 * 1e-5
    assert ours(99) == 1e-5 * 99 / 100
    # Update 200 used cosine step 199 - 101 of 100. (mlx-lm's test writes pi * 200 / 10
    # with delta=1e-1, which cannot fail.)
    expected = 1e-5 * 0.5 * (1.0 + math.cos(math.pi * 98 / 100))
    assert ours(199) == pytest.approx(expected, rel=4 * np.finfo(float).eps)


def test_single_schedule():
    config = {"name": "cosine_decay", "arguments": [0.1, 10]}
    ours = S.from_mlx_lm_config(config)
    expected = 0.1 * 0.5 * (1.0 + math.cos(math.pi * 4 / 10))
    assert ours(4) == pytest.approx(expected, rel=4 * np.finfo(float).eps)
    assert abs(ours(4) - build_schedule(config)(4).item()) <= 2 * EPS32 * 0.1


def test_non_zero_warmup():
    config = {"name": "cosine_decay", "warmup": 10, "warmup_init": 1e-6, "arguments": [1e-5, 20]}
    ours = S.from_mlx_lm_config(config)
    assert ours(0) == 1e-6
    assert abs(ours(0) - build_schedule(config)(0).item()) <= 2 * EPS32 * 1e-5


@pytest.mark.parametrize(
    "config, missing",
    [
        ({"warmup": 100}, "name"),
        ({"cosine_decay": None}, "name"),
        ({"name": "cosine_decay", "warmup": 100}, "arguments"),
    ],
)
def test_malformed_config(config, missing):
    with pytest.raises(KeyError):  # mlx-lm's own expectation
        build_schedule(config)
    with pytest.raises(ValueError, match=f"missing key '{missing}'"):
        S.from_mlx_lm_config(config)


# -- every name build_schedule can look up --------------------------------------------------

CANDIDATE_ARGUMENTS = [[1e-3, 0.9], [1e-3, 0.9, 10], [1e-3, 10, 1e-5], [[1e-3], []]]


def mlx_lm_runs(cfg):
    """Whether mlx-lm builds ``cfg`` and its first updates get a finite rate."""
    try:
        rates = build_schedule(cfg)(mx.arange(20, dtype=mx.uint64))
        return bool(np.isfinite(np.array(rates)).all())
    except Exception:  # build_schedule raises whatever the looked-up object raises
        return False


@pytest.mark.parametrize("name", [n for n in dir(optim.schedulers) if not n.startswith("_")])
def test_every_name_build_schedule_looks_up_works_or_is_refused(name):
    runs = [a for a in CANDIDATE_ARGUMENTS if mlx_lm_runs({"name": name, "arguments": a})]
    assert bool(runs) == (name in SUPPORTED)
    for arguments in runs:
        assert_close_to_mlx_lm({"name": name, "arguments": arguments}, range(40), name)
    if not runs:
        with pytest.raises(ValueError, match=re.escape(f"one of {SUPPORTED!r}, got {name!r}")):
            S.from_mlx_lm_config({"name": name, "arguments": [1e-3, 0.9, 10]})


def test_join_schedules_is_refused_with_the_form_that_does_joins():
    cfg = {"name": "join_schedules", "arguments": [[1e-3], []]}
    build_schedule(cfg)  # mlx-lm builds it, then its first step fails
    assert not mlx_lm_runs(cfg)
    with pytest.raises(ValueError, match=r"got 'join_schedules' \(.*to_dict\(\) form\)"):
        S.from_mlx_lm_config(cfg)


# -- the forms YAML gives, and mlx-lm's defaults ---------------------------------------------


def load(text):
    return yaml.load(text, yaml_loader)["lr_schedule"]


def test_whole_floats_count_steps():
    cfg = load("lr_schedule: {name: cosine_decay, arguments: [1e-5, 1e3], warmup: 5.0}")
    assert cfg["arguments"][1] == 1000.0 and isinstance(cfg["arguments"][1], float)
    assert isinstance(cfg["warmup"], float)
    ours = assert_close_to_mlx_lm(cfg, range(1100))
    assert ours == S.from_mlx_lm_config(
        {"name": "cosine_decay", "arguments": [1e-5, 1000], "warmup": 5}
    )
    for cfg in (
        {"name": "linear_schedule", "arguments": [1e-3, 0.0, 2e1], "warmup": 1e1},
        {"name": "step_decay", "arguments": [1e-3, 0.5, 1e1]},
    ):
        assert_close_to_mlx_lm(cfg, range(60))


@pytest.mark.parametrize(
    "cfg, message",
    [
        (
            {"name": "cosine_decay", "arguments": [1e-5, 1000.5]},
            r"arguments\[1\] \(cosine_decay's decay_steps\) must be a whole number of steps, "
            r"got 1000\.5",
        ),
        (
            {"name": "linear_schedule", "arguments": [1e-5, 0.0, 2.5]},
            r"arguments\[2\] \(linear_schedule's steps\) .* got 2\.5",
        ),
        (
            {"name": "step_decay", "arguments": [1e-3, 0.5, 10.5]},
            r"arguments\[2\] \(step_decay's step_size\) .* got 10\.5",
        ),
        (
            {"name": "cosine_decay", "arguments": [1e-5, 1000], "warmup": 5.5},
            r"warmup must be a whole number of steps, got 5\.5",
        ),
        (
            {"name": "cosine_decay", "arguments": [1e-5, 1000], "warmup": True},
            r"warmup must be an integer >= 1, got True \(bool\)",
        ),
        (
            {"name": "exponential_decay", "arguments": [1e-3, 0.0]},
            r"arguments \[0\.001, 0\.0\]: exponential_decay: decay_rate must be greater than 0",
        ),
    ],
)
def test_refused_although_mlx_lm_runs_it(cfg, message):
    """A fractional step count, a bool warmup, a decay rate of 0: mlx-lm runs it (a schedule
    over fractional steps, a 1-step warmup, a rate of 0 from step 1); we name the odd value."""
    assert mlx_lm_runs(cfg)
    with pytest.raises(ValueError, match=message):
        S.from_mlx_lm_config(cfg)


@pytest.mark.parametrize("no_warmup", [0, 0.0, None, False])
def test_a_false_warmup_is_no_warmup(no_warmup):
    cfg = {"name": "cosine_decay", "arguments": [2e-4, 50], "warmup": no_warmup}
    assert assert_close_to_mlx_lm(cfg, range(60)) == S.cosine_decay(2e-4, 50)


def test_warmup_init_defaults_to_zero():
    cfg = {"name": "cosine_decay", "arguments": [1e-5, 20], "warmup": 10}
    ours = assert_close_to_mlx_lm(cfg, range(40))
    assert ours == S.from_mlx_lm_config({**cfg, "warmup_init": 0.0}) and ours(0) == 0.0


def test_peak_is_held_for_two_updates_and_the_cosine_counts_after_the_warmup():
    cfg = {"name": "cosine_decay", "arguments": [1.0, 100], "warmup": 10}
    ours = assert_close_to_mlx_lm(cfg, range(120))
    assert ours(10) == 1.0 and ours(11) == 1.0 and ours(12) < 1.0
    assert ours(111) == 0.0 and ours(110) > 0.0


@pytest.mark.parametrize(
    "cfg, where",
    [
        ({"name": "cosine_decay", "arguments": ["1e-5", 1000]}, r"arguments\[0\]"),
        ({"name": "cosine_decay", "arguments": [1e-5, "1e3"]}, r"arguments\[1\]"),
        ({"name": "cosine_decay", "arguments": [1e-5, 10], "warmup": "1e2"}, "warmup"),
        (
            {"name": "cosine_decay", "arguments": [1e-5, 10], "warmup": 2, "warmup_init": "1e-7"},
            "warmup_init",
        ),
    ],
)
def test_numbers_read_as_text_point_to_mlx_lm_s_yaml_loader(cfg, where):
    # Plain PyYAML reads 1e-5 as a string; mlx-lm cannot run that either.
    assert not mlx_lm_runs(cfg)
    with pytest.raises(ValueError, match=rf"{where}.* got the string .*mlx_lm\.lora\.yaml_loader"):
        S.from_mlx_lm_config(cfg)


def test_keys_mlx_lm_ignores_are_ignored_with_a_warning():
    cfg = {"name": "cosine_decay", "arguments": [1e-5, 100], "warmup_steps": 10}
    with pytest.warns(UserWarning, match=r"\['warmup_steps'\] are ignored"):
        ours = S.from_mlx_lm_config(cfg)
    assert ours == S.cosine_decay(1e-5, 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.from_mlx_lm_config({"name": "cosine_decay", "arguments": [1e-5, 9], "warmup": 1})


# -- a grid of YAML configs, as mlx_lm.lora reads them -------------------------------------

DOC_EXAMPLE = """\
# Schedule can only be specified in a config file, uncomment to use.
lr_schedule:
  name: cosine_decay
  warmup: 100 # 0 for no warmup
  warmup_init: 1e-7 # 0 if not specified
  arguments: [1e-5, 1000, 1e-7] # passed to scheduler
"""

RATES = ["1e-5", "1.0e-5", "0.00001", "2e-4", "3.0e-4", "1e-3", "5E-5", "7.3e-6", "1"]
STEP_COUNTS = ["1000", "1e3", "1000.0", "1.0e3", "500", "5e2", "1_000", "100", "1e1", "1"]
ENDS = [None, "0", "0.0", "1e-7", "1.0e-6"]
DECAY_RATES = ["0.999", "0.99", "9.99e-1", "0.5", "0.9"]
STEP_SIZES = ["1", "10", "1e1", "100.0", "37"]
WARMUPS = [None, "0", "0.0", "null", "false", "1", "5.0", "10", "100", "1e2"]
WARMUP_INITS = [None, "0", "0.0", "1e-7", "1.0e-6"]


def render(name, arguments, warmup, warmup_init, style):
    keys = [("name", name)]
    if warmup is not None:
        keys.append(("warmup", warmup))
    if warmup_init is not None:
        keys.append(("warmup_init", warmup_init))
    if style == "flow":
        inner = ", ".join(f"{k}: {v}" for k, v in keys)
        return f"lr_schedule: {{{inner}, arguments: [{', '.join(arguments)}]}}\n"
    lines = ["learning_rate: 1e-5", "lr_schedule:"] + [f"  {k}: {v}" for k, v in keys]
    if style == "list":
        lines += ["  arguments:"] + [f"    - {a}" for a in arguments]
    else:
        lines.append(f"  arguments: [{', '.join(arguments)}] # passed to scheduler")
    return "\n".join(lines) + "\n"


def grid(size=200, seed=0):
    texts = [
        DOC_EXAMPLE,
        "lr_schedule: {name: cosine_decay, arguments: [1e-5, 1e3], warmup: 5.0}\n",
        "lr_schedule: {name: cosine_decay, arguments: [1e-5, 1000], warmup: 0}\n",
    ]
    rng = random.Random(seed)
    while len(texts) < size:
        name = rng.choice(SUPPORTED)
        rate = rng.choice(RATES)
        if name == "cosine_decay":
            end = rng.choice(ENDS)
            arguments = [rate, rng.choice(STEP_COUNTS)] + ([end] if end else [])
        elif name == "linear_schedule":
            arguments = [rate, rng.choice(ENDS[1:]), rng.choice(STEP_COUNTS)]
        elif name == "exponential_decay":
            arguments = [rate, rng.choice(DECAY_RATES)]
        else:
            arguments = [rate, rng.choice(DECAY_RATES), rng.choice(STEP_SIZES)]
        style = rng.choice(["block", "flow", "list"])
        text = render(name, arguments, rng.choice(WARMUPS), rng.choice(WARMUP_INITS), style)
        if text not in texts:
            texts.append(text)
    return texts


GRID = grid()


def steps_for(cfg):
    """Every step of the run and its edges: both sides of the join at warmup + 1, the end."""
    warmup = int(cfg.get("warmup") or 0)
    name, arguments = cfg["name"], cfg["arguments"]
    length = {
        "cosine_decay": lambda: int(arguments[1]),
        "linear_schedule": lambda: int(arguments[2]),
        "exponential_decay": lambda: 3000,
        "step_decay": lambda: 5 * int(arguments[2]),
    }[name]()
    last = min(warmup + length + 10, 5000)
    edges = [warmup - 1, warmup, warmup + 1, warmup + 2, warmup + length, warmup + length + 1]
    edges += [warmup + length + 2, 100_000]
    return np.unique(np.concatenate([np.arange(last), [e for e in edges if e >= 0]]))


@pytest.mark.parametrize("text", GRID, ids=[f"yaml{i}" for i in range(len(GRID))])
def test_yaml_grid_matches_build_schedule(text):
    cfg = load(text)
    ours = assert_close_to_mlx_lm(cfg, steps_for(cfg), text)
    warmup = int(cfg.get("warmup") or 0)
    if warmup:
        assert ours.boundaries == [warmup + 1]
        assert ours(warmup) == ours(warmup + 1) == float(cfg["arguments"][0])


def test_the_grid_covers_the_forms_yaml_gives():
    cfgs = [load(text) for text in GRID]
    assert len(set(GRID)) == 200
    step_positions = {"cosine_decay": 1, "linear_schedule": 2, "step_decay": 2}
    float_steps = [
        c
        for c in cfgs
        if isinstance(c["arguments"][step_positions.get(c["name"], 0)], float)
        and c["name"] in step_positions
    ]
    float_warmups = [c for c in cfgs if isinstance(c.get("warmup"), float) and c["warmup"]]
    assert len(float_steps) >= 30 and len(float_warmups) >= 20
    assert {c["name"] for c in cfgs} == set(SUPPORTED)
    assert sum(bool(c.get("warmup")) for c in cfgs) >= 80
    assert sum("warmup" in c and not c["warmup"] for c in cfgs) >= 20
    assert load(DOC_EXAMPLE) == {
        "name": "cosine_decay",
        "warmup": 100,
        "warmup_init": 1e-7,
        "arguments": [1e-5, 1000, 1e-7],
    }
