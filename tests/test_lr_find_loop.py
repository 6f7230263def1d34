"""The range test on a real loop: a tiny mlx linear regression, a real ``mx.compile``d step
and real mlx optimizers; outputs read back with json, matplotlib and TensorBoard's reader."""

import itertools
import json
import math
import os
import signal
import sys
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlx_sched_callbacks.lr_find import find_lr, write_outputs
from mlx_sched_callbacks.lr_find.outputs import PLOT_HINT

DIM, BATCHES, BATCH = 8, 16, 32


class Regression:
    """``y = X w + noise`` in 16 batches of 32, and a fresh ``nn.Linear`` for it; same seed,
    same data and same initial weights."""

    def __init__(self, seed=0, dtype=mx.float32):
        mx.random.seed(seed)
        w = mx.random.normal((DIM, 1))
        x = mx.random.normal((BATCHES, BATCH, DIM))
        y = x @ w + 0.1 * mx.random.normal((BATCHES, BATCH, 1))
        self.model = nn.Linear(DIM, 1)
        mx.eval(x, y, self.model.parameters())
        self.model.set_dtype(dtype)
        self.x, self.y = x.astype(dtype), y.astype(dtype)

    @staticmethod
    def loss(model, x, y):
        return nn.losses.mse_loss(model(x), y)

    def full_loss(self) -> float:
        return self.loss(self.model, self.x.reshape(-1, DIM), self.y.reshape(-1, 1)).item()

    def step_for(self, optimizer, before=None):
        """A compiled update on the next batch; ``before(i)`` runs ahead of update ``i``."""
        model = self.model
        optimizer.init(model.trainable_parameters())
        loss_and_grad = nn.value_and_grad(model, self.loss)
        state = [model.state, optimizer.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def update(x, y):
            loss, grads = loss_and_grad(model, x, y)
            optimizer.update(model, grads)
            return loss

        updates = itertools.count(1)

        def step():
            i = next(updates)
            if before is not None:
                before(i)
            batch = (i - 1) % BATCHES
            loss = update(self.x[batch], self.y[batch])
            mx.eval(loss, state)
            return loss.astype(mx.float32)

        return step


def run(tmp_path, name, **kwargs):
    problem = Regression()
    optimizer = optim.SGD(learning_rate=0.05)
    settings = {"min_lr": 1e-4, "max_lr": 10.0, "num_steps": 100, **kwargs}
    result = find_lr(problem.step_for(optimizer), optimizer, out=tmp_path / name, **settings)
    return problem, optimizer, result


@pytest.fixture(scope="module")
def diverging(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("lr_find")
    return tmp_path, *run(tmp_path, "a")


def test_sgd_used_exactly_the_ramp(tmp_path):
    problem = Regression()
    optimizer = optim.SGD(learning_rate=0.05)
    model = problem.model
    grad = nn.value_and_grad(model, problem.loss)
    seen = []

    def before(i):
        # The rate find_lr set, and the update SGD is about to make with it.
        batch = (i - 1) % BATCHES
        _, grads = grad(model, problem.x[batch], problem.y[batch])
        seen.append(
            (optimizer.learning_rate.item(), np.array(model.weight), np.array(grads["weight"]))
        )

    step = problem.step_for(optimizer, before)
    weights_after = []

    def recording_step():
        loss = step()
        weights_after.append(np.array(model.weight))
        return loss

    result = find_lr(recording_step, optimizer, min_lr=1e-4, max_lr=0.5, num_steps=60)
    assert not result.stopped_early and result.reason is None and len(result.rate) == 60
    set_rates = np.array([rate for rate, _, _ in seen])
    np.testing.assert_array_equal(set_rates, result.rate.astype(np.float32))
    # SGD: w_after = w_before - rate * grad; infer the rate where the update is far above
    # float32 rounding. Neighbouring rates differ by 5000 ** (1 / 59) = 1.155.
    checked = 0
    for (rate, before_w, g), after_w in zip(seen, weights_after):
        k = np.unravel_index(np.argmax(np.abs(g)), g.shape)
        step_size = before_w[k] - after_w[k]
        if abs(step_size) > 1e-3 * max(abs(before_w[k]), 1e-3):
            assert step_size / g[k] == pytest.approx(rate, rel=2e-3)
            checked += 1
    assert checked >= 30
    assert optimizer.learning_rate.item() == np.float32(0.05)  # put back


def test_adam_and_a_python_float_loss_work_too():
    problem = Regression()
    optimizer = optim.Adam(learning_rate=1e-3)
    rates = []
    step = problem.step_for(optimizer, lambda i: rates.append(optimizer.learning_rate.item()))
    result = find_lr(lambda: step().item(), optimizer, min_lr=1e-5, max_lr=1.0, num_steps=30)
    assert rates == [np.float32(r) for r in result.rate]
    assert optimizer.learning_rate.item() == np.float32(1e-3)


def test_a_high_max_lr_stops_early_at_the_divergence(diverging):
    _, _, _, result = diverging
    assert result.stopped_early and result.reason == "diverged"
    n = len(result.rate)
    assert 50 < n < 100
    s = result.smoothed_loss
    assert s[-1] > 4 * s[:-1].min()
    assert all(s[i] <= 4 * s[:i].min() for i in range(1, n - 1))
    assert f"at update {n} " in result.detail


def test_valley_lies_where_the_smoothed_loss_was_falling(diverging):
    _, _, _, result = diverging
    valley = result.suggestions["valley"]
    assert result.suggested_rate == valley.rate == result.rate[valley.index]
    # The rules read updates 11 .. n - 5 (indices 10 .. n - 6).
    s, window = result.smoothed_loss, slice(10, len(result.rate) - 5)
    slope = np.gradient(s[window], np.log10(result.rate[window]))
    assert slope[valley.index - 10] < 0
    lowest = 10 + int(np.argmin(s[window]))
    assert s[valley.index] < s[10] and valley.index < lowest
    assert result.suggestions["minimum"].index == lowest
    assert result.suggestions["minimum"].rate == result.rate[lowest] / 10


def test_training_at_the_suggested_rate_beats_max_lr_and_min_lr(diverging):
    _, _, _, result = diverging
    finals = {}
    for name, rate in [("valley", result.suggested_rate), ("max", 10.0), ("min", 1e-4)]:
        problem = Regression()
        start = problem.full_loss()
        optimizer = optim.SGD(learning_rate=rate)
        step = problem.step_for(optimizer)
        for _ in range(30):
            step()
        finals[name] = problem.full_loss()
    assert finals["valley"] < start / 10
    assert math.isnan(finals["max"]) or finals["max"] > 100 * finals["valley"]
    assert finals["min"] > 10 * finals["valley"]


def test_outputs_read_back(diverging):
    tmp_path, _, _, result = diverging
    out = tmp_path / "a"
    saved = json.loads((out / "lr_find.json").read_text())
    n = len(result.rate)
    assert saved["updates"] == n and saved["stopped_early"] is True
    assert saved["reason"] == "diverged" and saved["chosen"] == "valley"
    assert saved["rate"] == result.rate.tolist()
    assert saved["loss"] == result.loss.tolist()
    assert saved["smoothed_loss"] == result.smoothed_loss.tolist()
    valley = result.suggestions["valley"]
    assert saved["suggestions"]["valley"] == {
        "rate": valley.rate,
        "index": valley.index,
        "update": valley.index + 1,
    }
    assert saved["suggested_rate"] == valley.rate
    assert saved["settings"] == {
        "min_lr": 1e-4,
        "max_lr": 10.0,
        "num_steps": 100,
        "mode": "exponential",
        "divergence": 4.0,
        "beta": 0.98,
        "skip_begin": 10,
        "skip_end": 5,
    }
    png = (out / "lr_find.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    from matplotlib.image import imread

    assert imread(out / "lr_find.png").shape[2] == 4
    assert result.outputs["png"] == str(out / "lr_find.png")

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == {
        "lr_find/rate",
        "lr_find/loss",
        "lr_find/smoothed_loss",
    }
    for tag, values in [
        ("lr_find/rate", result.rate),
        ("lr_find/loss", result.loss),
        ("lr_find/smoothed_loss", result.smoothed_loss),
    ]:
        points = events.Scalars(tag)
        assert [p.step for p in points] == list(range(1, n + 1))
        np.testing.assert_array_equal([p.value for p in points], values.astype(np.float32))


def test_two_runs_write_byte_identical_json(tmp_path):
    # mlx 0.32.4's CPU kernels do not sum in a fixed order: in float32 the loss of an
    # update came out one ulp apart in a few percent of identical runs, in float64 runs
    # differed by up to 1e-14 relative. Computed in float64 and reported in float32, the
    # losses repeat exactly, and what is left to compare is what find_lr adds.
    with mx.stream(mx.cpu):  # float64 runs on the CPU only
        for name in ("a", "b"):
            problem = Regression(dtype=mx.float64)
            optimizer = optim.SGD(learning_rate=0.05)
            step = problem.step_for(optimizer)
            find_lr(step, optimizer, min_lr=1e-4, max_lr=10.0, out=tmp_path / name)
    saved = json.loads((tmp_path / "a" / "lr_find.json").read_text())
    assert saved["stopped_early"] and saved["suggested_rate"] is not None
    first, second = (tmp_path / name / "lr_find.json" for name in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()


def test_sigint_mid_run_stops_politely_and_keeps_what_was_measured(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    problem = Regression()
    optimizer = optim.SGD(learning_rate=0.05)

    def ctrl_c_at_20(i):
        if i == 20:
            os.kill(os.getpid(), signal.SIGINT)

    step = problem.step_for(optimizer, ctrl_c_at_20)
    result = find_lr(step, optimizer, min_lr=1e-4, max_lr=1.0, num_steps=100, out=tmp_path)
    assert len(result.rate) == 20 and result.stopped_early
    assert result.reason == "signal" and result.detail == "SIGINT during update 20"
    saved = json.loads((tmp_path / "lr_find.json").read_text())
    assert saved["updates"] == 20 and len(saved["loss"]) == 20
    assert saved["reason"] == "signal"
    assert signal.getsignal(signal.SIGINT) is previous
    assert optimizer.learning_rate.item() == np.float32(0.05)


def test_callable_learning_rate_is_refused():
    problem = Regression()
    for optimizer in [
        optim.SGD(learning_rate=optim.cosine_decay(0.1, 100)),
        optim.MultiOptimizer(
            [
                optim.SGD(learning_rate=0.1),
                optim.Adam(learning_rate=optim.linear_schedule(0, 1, 5)),
            ],
            [lambda path, _: "bias" in path],
        ),
    ]:
        with pytest.raises(ValueError, match="callable learning_rate"):
            find_lr(problem.step_for(optimizer), optimizer)
    with pytest.raises(ValueError, match="relative_step=True"):
        find_lr(lambda: 1.0, optim.Adafactor())


def scripted(losses):
    """A step that makes no update and returns the given losses: a unit test of the stops."""
    losses = iter(losses)

    def step():
        return next(losses)

    return step


def test_the_stopping_point_is_kept_and_non_finite_losses_are_null_in_json(tmp_path):
    optimizer = optim.SGD(learning_rate=0.0)
    result = find_lr(scripted([1.0] * 30 + [1000.0]), optimizer, out=tmp_path / "big")
    assert len(result.rate) == 31 and result.loss[-1] == 1000.0 and result.reason == "diverged"
    result = find_lr(scripted([1.0] * 12 + [math.nan]), optimizer, out=tmp_path / "nan")
    assert len(result.rate) == 13 and math.isnan(result.loss[-1])
    assert result.reason == "loss_not_finite" and "nan" in result.detail
    saved = json.loads((tmp_path / "nan" / "lr_find.json").read_text())
    assert saved["loss"][-1] is None and saved["smoothed_loss"][-1] is None
    assert saved["loss"][:12] == [1.0] * 12
    # Ran to the end: the last update diverged, yet nothing was left out.
    result = find_lr(scripted([1.0] * 19 + [1000.0]), optimizer, num_steps=20)
    assert result.reason == "diverged" and not result.stopped_early


def test_sigterm_stops_too_and_stop_signals_none_leaves_handlers_alone():
    optimizer = optim.SGD(learning_rate=0.0)
    updates = itertools.count(1)

    def step():
        if next(updates) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return 1.0

    result = find_lr(step, optimizer, num_steps=50)
    assert len(result.rate) == 5 and result.detail == "SIGTERM during update 5"

    def step_with_interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        find_lr(step_with_interrupt, optimizer, stop_signals=None)


def test_without_matplotlib_the_png_is_skipped_with_a_hint(tmp_path, monkeypatch, capsys):
    result = find_lr(scripted([2.0 - 0.01 * i for i in range(30)]), optim.SGD(0.0), num_steps=30)
    for name in ["matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"]:
        monkeypatch.setitem(sys.modules, name, None)
    outputs = write_outputs(result, tmp_path)
    assert outputs["png"] is None and not (tmp_path / "lr_find.png").exists()
    assert (tmp_path / "lr_find.json").exists()
    assert PLOT_HINT == 'pip install "mlx-sched-callbacks[plot]"'
    hint = capsys.readouterr().err.strip()
    assert hint.count("\n") == 0 and hint.endswith(PLOT_HINT) and hint == outputs["note"]


@pytest.mark.parametrize(
    "kwargs, error, named",
    [
        ({"suggest": "slide"}, ValueError, "suggest must be one of ['valley', 'steep', 'minimum']"),
        ({"divergence": 1.0}, ValueError, "divergence=1.0"),
        ({"num_steps": 5}, ValueError, "num_steps must be an integer >= 10, got num_steps=5"),
        ({"max_lr": 1e39}, ValueError, "max_lr must be finite in float32"),
    ],
)
def test_find_lr_refuses_bad_settings(kwargs, error, named):
    with pytest.raises(error) as raised:
        find_lr(lambda: 1.0, optim.SGD(learning_rate=0.0), **kwargs)
    assert named in str(raised.value)


def test_find_lr_refuses_a_step_that_returns_no_loss():
    with pytest.raises(TypeError, match=r"step\(\) must return the loss .* got None at update 1"):
        find_lr(lambda: None, optim.SGD(learning_rate=0.0))
    with pytest.raises(TypeError, match="step must be a callable"):
        find_lr(None, optim.SGD(learning_rate=0.0))
