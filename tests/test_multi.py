"""Several schedules in one callback: a MultiOptimizer's parts, and other hyperparameters."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars
from mlx.utils import tree_flatten

from mlx_sched_callbacks import LRScheduleCallback
from mlx_sched_callbacks import schedules as S
from mlx_sched_callbacks.run.checkpoint import load_optimizer_state, save_optimizer_state

SCHEDULES = {
    "weights": S.warmup_cosine(1e-2, 5, 30),
    "biases": S.step_decay(1e-1, 0.5, 7),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 1)

    def __call__(self, x):
        return self.b(nn.relu(self.a(x)))


def setup(log_dir, hyperparameters=None, multi=True):
    mx.random.seed(0)
    model = Net()
    if multi:
        parts = [optim.AdamW(learning_rate=0.0, weight_decay=0.1), optim.SGD(learning_rate=0.0)]
        optimizer = optim.MultiOptimizer(parts, [lambda name, w: w.ndim > 1])
        kwargs = dict(names=["weights", "biases"])
        schedule = dict(SCHEDULES)
    else:
        optimizer = optim.SGD(learning_rate=0.0, momentum=0.9, weight_decay=1e-3)
        kwargs = {}
        schedule = S.constant(0.05)
    callback = LRScheduleCallback(
        schedule, optimizer, log_dir, hyperparameters=hyperparameters, **kwargs
    )
    optimizer.init(model.trainable_parameters())
    traces = []
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        traces.append(1)
        loss, grads = nn.value_and_grad(model, lambda m: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
        return loss

    return model, optimizer, callback, step, state, traces


def batch(step):
    rng = np.random.default_rng(step)
    return mx.array(rng.normal(size=(16, 4)).astype(np.float32)), mx.zeros((16, 1))


def train(model, optimizer, callback, step, state, stop):
    while callback.step < stop:
        callback.on_step_begin()
        mx.eval(step(*batch(callback.step)), state)
        callback.on_step_end()


def params(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


WD = {"weight_decay/weights": S.linear_schedule(0.1, 0.0, 30)}


def test_multi_optimizer_logs_a_curve_per_part_and_resumes_exactly(tmp_path):
    model, optimizer, callback, step, state, traces = setup(tmp_path / "a", WD)
    for n in range(30):
        callback.on_step_begin()
        weights, biases = optimizer.optimizers
        assert weights.learning_rate.item() == np.float32(SCHEDULES["weights"](n))
        assert biases.learning_rate.item() == np.float32(SCHEDULES["biases"](n))
        assert weights.state["weight_decay"].item() == np.float32(WD["weight_decay/weights"](n))
        mx.eval(step(*batch(n)), state)
        callback.on_step_end()
    callback.close()
    assert len(traces) == 1
    for name, schedule in SCHEDULES.items():
        points = read_scalars(tmp_path / "a", f"train/learning_rate/{name}")
        assert points == [(s, float(np.float32(schedule(s - 1)))) for s in range(1, 31)]
    decay = read_scalars(tmp_path / "a", "train/weight_decay/weights")
    assert decay == [
        (s, float(np.float32(WD["weight_decay/weights"](s - 1)))) for s in range(1, 31)
    ]

    # Stop at 12, save everything, rebuild from nothing, load, finish.
    model2, optimizer2, callback2, step2, state2, _ = setup(tmp_path / "b", WD)
    train(model2, optimizer2, callback2, step2, state2, 12)
    mx.save_safetensors(
        str(tmp_path / "model.safetensors"), dict(tree_flatten(model2.parameters()))
    )
    save_optimizer_state(optimizer2, tmp_path / "optimizer.safetensors")
    callback2.save(tmp_path / "callback.json")
    callback2.close()
    model3, optimizer3, callback3, step3, state3, _ = setup(tmp_path / "b", WD)
    model3.load_weights(str(tmp_path / "model.safetensors"))
    load_optimizer_state(
        optimizer3, tmp_path / "optimizer.safetensors", model3.trainable_parameters()
    )
    callback3.load(tmp_path / "callback.json")
    train(model3, optimizer3, callback3, step3, state3, 30)
    callback3.close()
    for key, value in params(model).items():
        np.testing.assert_array_equal(params(model3)[key], value, err_msg=key)
    for name in SCHEDULES:
        tag = f"train/learning_rate/{name}"
        assert read_scalars(tmp_path / "b", tag) == read_scalars(tmp_path / "a", tag)


def eager_reference(momentum, weight_decay, steps):
    """The same SGD run without compile, with the attributes set by hand each step."""
    mx.random.seed(0)
    model = Net()
    optimizer = optim.SGD(learning_rate=0.05, momentum=0.9, weight_decay=1e-3)
    for n in range(steps):
        optimizer.momentum, optimizer.weight_decay = momentum(n), weight_decay(n)
        x, y = batch(n)
        _, grads = nn.value_and_grad(model, lambda m, x=x, y=y: ((m(x) - y) ** 2).mean())(model)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    return params(model)


def test_sgd_momentum_and_weight_decay_follow_schedules_in_a_compiled_step(tmp_path):
    momentum, decay = S.linear_schedule(0.9, 0.5, 20), S.cosine_decay(1e-3, 20)
    hyper = {"momentum": momentum, "weight_decay": decay}
    model, optimizer, callback, step, state, traces = setup(tmp_path, hyper, multi=False)
    train(model, optimizer, callback, step, state, 20)
    callback.close()
    assert len(traces) == 1
    reference = eager_reference(momentum, decay, 20)
    for key, value in params(model).items():
        np.testing.assert_allclose(value, reference[key], rtol=2e-6, atol=1e-7)
    # ...and the values did move: the same run with constant momentum differs.
    fixed = eager_reference(lambda n: 0.9, decay, 20)
    assert any(not np.allclose(fixed[k], v, rtol=1e-4) for k, v in params(model).items())
    assert read_scalars(tmp_path, "train/momentum")[-1] == (20, float(np.float32(momentum(19))))


def test_hyperparameter_errors():
    with pytest.raises(ValueError, match=r"SGD has no scalar hyperparameter 'betas'"):
        LRScheduleCallback(
            S.constant(0.1), optim.SGD(learning_rate=0.1), hyperparameters={"betas": S.constant(1)}
        )
    sgd = optim.SGD(learning_rate=0.1, momentum=0.0)
    callback = LRScheduleCallback(
        S.constant(0.1), sgd, hyperparameters={"momentum": S.linear_schedule(0.0, 0.9, 10)}
    )
    callback.on_step_begin()
    callback.on_step_end()
    with pytest.raises(ValueError, match="momentum was 0 at the first step"):
        callback.on_step_begin()
    multi = optim.MultiOptimizer([optim.SGD(learning_rate=0.1)] * 2, [lambda n, w: w.ndim > 1])
    with pytest.raises(ValueError, match=r"one schedule per sub-optimizer named \['0', '1'\]"):
        LRScheduleCallback({"0": S.constant(0.1)}, multi)
    with pytest.raises(ValueError, match=r"say which sub-optimizer"):
        LRScheduleCallback(S.constant(0.1), multi, hyperparameters={"momentum": S.constant(0.5)})
