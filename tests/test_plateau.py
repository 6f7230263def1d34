"""reduce_on_plateau: reductions at the right step, state in checkpoints, fed by mlx-lm."""

import json
import math
import sys
from pathlib import Path

import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import read_scalars

from mlx_sched_callbacks import LRScheduleCallback
from mlx_sched_callbacks import schedules as S
from mlx_sched_callbacks.tiny import build_tiny_dataset, build_tiny_model

HERE = Path(__file__).resolve().parent


def reference_reductions(losses, patience, factor, threshold, cooldown):
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode='min', threshold_mode='rel'), by hand."""
    best, bad, cooling, scale, when = math.inf, 0, 0, 1.0, []
    for i, loss in enumerate(losses):
        if loss < best * (1 - threshold):
            best, bad = loss, 0
        else:
            bad += 1
        if cooling:
            cooling, bad = cooling - 1, 0
        if bad > patience:
            scale, cooling, bad = scale * factor, cooldown, 0
            when.append(i)
    return when


LOSSES = [1.0, 0.9, 0.9, 0.9, 0.9, 0.85, 0.86, 0.86, 0.86, 0.86, 0.86, 0.5, 0.5, 0.5, 0.5, 0.5]


@pytest.mark.parametrize("patience, cooldown", [(2, 0), (1, 2), (0, 0)])
def test_reductions_match_torch_rules(patience, cooldown):
    phase = S.reduce_on_plateau(1.0, factor=0.5, patience=patience, cooldown=cooldown)
    reduced_at = [i for i, loss in enumerate(LOSSES) if phase.observe(loss, step=10 * i)]
    assert reduced_at == reference_reductions(LOSSES, patience, 0.5, 1e-4, cooldown)
    assert reduced_at  # the sequence stalls for every setting here
    assert phase.reductions == [10 * i for i in reduced_at]
    for k, step in enumerate(phase.reductions):
        assert phase(step - 1) == 0.5**k and phase(step) == 0.5 ** (k + 1)


def test_torch_agrees_when_installed():
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
    phase = S.reduce_on_plateau(1.0, factor=0.5, patience=2)
    for i, loss in enumerate(LOSSES):
        torch_sched.step(loss)
        phase.observe(loss, step=i)
        assert phase(i) == opt.param_groups[0]["lr"]


def test_min_value_and_validation():
    phase = S.reduce_on_plateau(1.0, factor=0.1, patience=0, min_value=0.05)
    for step, loss in enumerate([1.0, 1.0, 1.0, 1.0]):
        phase.observe(loss, step)
    assert phase(10) == 0.05 and len(phase.reductions) == 2
    with pytest.raises(ValueError, match="factor must be below 1, got 1.5"):
        S.reduce_on_plateau(1.0, factor=1.5)
    with pytest.raises(ValueError, match="threshold_mode must be 'rel' or 'abs'"):
        S.reduce_on_plateau(1.0, threshold_mode="max")
    with pytest.raises(ValueError, match="NaN"):
        phase.observe(float("nan"), 5)


def plateau_schedule():
    return S.join_schedules(
        [S.linear_schedule(0.0, 1.0, 10), S.reduce_on_plateau(1.0, factor=0.5, patience=1)], [10]
    )


def run(callback, losses_by_step, stop):
    """Steps from callback.step to stop; a validation loss before the steps that have one."""
    used = []
    while callback.step < stop:
        if callback.step in losses_by_step:
            callback.on_validation(losses_by_step[callback.step])
        used.append(callback.on_step_begin())
        callback.on_step_end()
    return used


# validation every 5 updates; the loss stalls after step 15 and again after 40
VAL = {
    s: loss for s, loss in zip(range(0, 80, 5), [9, 8, 7, 6, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4])
}


def test_reduction_lands_on_the_right_update_and_survives_a_resume(tmp_path):
    whole = LRScheduleCallback(plateau_schedule(), optim.SGD(learning_rate=0.0), tmp_path / "a")
    rates = run(whole, VAL, 80)
    whole.close()
    # Reports before step 10 are ignored (the warmup). After it: best 5 at step 20, stalls
    # at 25 and 30 (patience 1) -> reduced from update 30; 4 at 40, stalls at 45 and 50 ->
    # 50; then every second stalled report: 60, 70.
    phase = whole.schedule.schedules[1]
    assert phase.reductions == [20, 40, 50, 60]  # local steps: global minus the warmup's 10
    losses_seen = [VAL[s] for s in sorted(VAL) if s >= 10]
    expected = reference_reductions(losses_seen, patience=1, factor=0.5, threshold=1e-4, cooldown=0)
    assert [5 * i for i in expected] == phase.reductions
    assert rates[29] == 1.0 and rates[30] == 0.5 and rates[49] == 0.5 and rates[50] == 0.25
    assert rates[60] == 0.125 and rates[70] == 0.0625 and rates[79] == 0.0625
    assert [v for _, v in read_scalars(tmp_path / "a")] == [float(np.float32(r)) for r in rates]

    first = LRScheduleCallback(plateau_schedule(), optim.SGD(learning_rate=0.0), tmp_path / "b")
    run(first, VAL, 36)  # one reduction done; patience counting towards the next
    first.save(tmp_path / "cb.json")
    saved = json.loads((tmp_path / "cb.json").read_text())
    assert saved["schedule_state"]["learning_rate.schedules[1]"]["reductions"] == [20]
    run(first, VAL, 47)  # lost with the "crash"
    first.close()
    second = LRScheduleCallback(plateau_schedule(), optim.SGD(learning_rate=0.0), tmp_path / "b")
    second.load(tmp_path / "cb.json")
    resumed = run(second, VAL, 80)
    second.close()
    assert resumed == rates[36:]
    assert read_scalars(tmp_path / "b") == read_scalars(tmp_path / "a")


def test_a_checkpoint_without_the_phase_state_is_refused(tmp_path):
    callback = LRScheduleCallback(plateau_schedule(), optim.SGD(learning_rate=0.0))
    state = callback.state_dict()
    del state["schedule_state"]
    with pytest.raises(ValueError, match=r"no state for the phase at learning_rate.schedules\[1\]"):
        LRScheduleCallback(plateau_schedule(), optim.SGD(learning_rate=0.0)).load_state_dict(state)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "model"), build_tiny_dataset(root / "data")


def test_mlx_lm_validation_feeds_the_plateau_and_resumes(tiny, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    from lm_run import build

    # A threshold no loss can beat after the first report: it reduces every 2 reports.
    def schedule():
        plateau = S.reduce_on_plateau(1e-3, factor=0.5, patience=1, threshold=0.9)
        return S.join_schedules([S.linear_schedule(0.0, 1e-3, 4), plateau], [4])

    kwargs = dict(iters=30, save_every=10, schedule=schedule(), steps_per_eval=5)
    whole, _ = build(*tiny, tmp_path / "whole", **kwargs)
    whole.train()
    rates = read_scalars(tmp_path / "whole/tensorboard")
    phase = whole.callback.schedule.schedules[1]
    # Validation at iterations 1, 5, 10, ..., 30, before each iteration's update, so after
    # 0, 4, 9, ... updates. The phase starts at update 4: its reports are at local steps
    # 0 (best), 5, 10 (reduce), 15, 20 (reduce), 25.
    assert phase.reductions == [10, 20]
    assert rates[13][1] == float(np.float32(1e-3)) and rates[14][1] == float(np.float32(5e-4))
    assert rates[23][1] == float(np.float32(5e-4)) and rates[24][1] == float(np.float32(2.5e-4))

    kwargs["schedule"] = schedule()
    parts, _ = build(*tiny, tmp_path / "parts", **kwargs)
    parts.train(until=10)
    kwargs["schedule"] = schedule()
    resumed, _ = build(*tiny, tmp_path / "parts", **kwargs)
    assert resumed.resume() == 10
    resumed.train()
    assert read_scalars(tmp_path / "parts/tensorboard") == rates
    del sys.modules["lm_run"]
