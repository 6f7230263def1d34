"""reduce_on_plateau: reductions at the right step, state in checkpoints, fed by mlx-lm."""

import json
import math
import sys
from pathlib import Path

import mlx.core as mx
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


# -- parity with torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min") -----------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


class TorchPlateau:
    """torch's scheduler on a one-parameter SGD, and a count of the reductions it tried."""

    def __init__(self, torch, init, min_value=0.0, **settings):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=init)
        self.group = optimizer.param_groups[0]
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, min_lr=min_value, **settings
        )
        self.tried = 0
        reduce_lr = self.sched._reduce_lr

        def counting(epoch):
            self.tried += 1
            reduce_lr(epoch)

        self.sched._reduce_lr = counting

    @property
    def lr(self):
        return self.group["lr"]

    @property
    def counters(self):
        s = self.sched
        return s.best, s.num_bad_epochs, s.cooldown_counter


def counters(phase):
    return phase.best, phase.stalled, phase.cooldown_left


def follow(torch, init, losses, steps=None, resume_at=None, **settings):
    """Report ``losses`` to both; after each, the rates, the return and the counters agree.

    Returns the phase, torch's rate after the last report at each step, and torch's
    count of tried reductions.
    """
    steps = list(range(len(losses))) if steps is None else steps
    phase = S.reduce_on_plateau(init, **settings)
    theirs = TorchPlateau(torch, init, **settings)
    rate_at = {}
    for i, (loss, step) in enumerate(zip(losses, steps)):
        if i == resume_at:  # a checkpoint, through JSON, and a fresh phase from it
            spec = json.loads(json.dumps(phase.to_dict(), allow_nan=False))
            state = json.loads(json.dumps(phase.state_dict(), allow_nan=False))
            phase = S.from_dict(spec)
            phase.load_state_dict(state)
        before = theirs.lr
        theirs.sched.step(loss)
        reduced = phase.observe(loss, step)
        where = f"report {i} (loss {loss!r}, step {step}) of {losses} with {init=}, {settings}"
        assert phase(step) == theirs.lr, where
        assert reduced == (theirs.lr != before), where
        assert counters(phase) == theirs.counters, where
        rate_at[step] = theirs.lr
    return phase, rate_at, theirs.tried


def random_case(rng):
    """Settings and a loss sequence: plateaus, ties with the best, improvements above and
    below the threshold, worse losses and +inf; min_value below, near and above init; eps
    from 0 to large enough to block the first reduction."""
    init = float(rng.choice([1.0, 1e-3, 3e-4, 0.1, 1e-7, 2e-8, 0.0, 10 ** rng.uniform(-8, 0)]))
    factor = float(rng.choice([0.1, 0.5, 0.9, 0.999, rng.uniform(0.01, 0.99)]))
    threshold = float(rng.choice([0.0, 1e-4, 1e-2, 0.1, 0.5, 1.0, 2.0]))
    min_kind = rng.choice(["zero", "below", "near", "above", "init"])
    min_value = {
        "zero": 0.0,
        "below": init * rng.uniform(0.0, 1.0),
        "near": init - rng.uniform(0.0, 2e-8),
        "above": init * rng.uniform(1.0, 3.0) + rng.uniform(0.0, 1e-3),
        "init": init,
    }[min_kind]
    eps_kind = rng.choice(["default", "zero", "large", "any"])
    eps = {
        "default": 1e-8,
        "zero": 0.0,
        "large": init * (1 - factor) * rng.uniform(0.3, 3.0),
        "any": 10 ** rng.uniform(-12, -1),
    }[eps_kind]
    settings = dict(
        factor=factor,
        patience=int(rng.integers(0, 5)),
        threshold=threshold,
        threshold_mode=str(rng.choice(["rel", "abs"])),
        cooldown=int(rng.integers(0, 4)),
        min_value=float(min_value),
        eps=float(eps),
    )
    n = int(rng.integers(5, 60))
    loss = float(rng.uniform(0.5, 5.0)) * (-1.0 if rng.random() < 0.15 else 1.0)
    best, losses = math.inf, []
    for _ in range(n):
        action = rng.choice(["same", "tie", "down", "nudge", "up", "inf"], p=PROBABILITIES)
        if action == "tie" and math.isfinite(best):
            loss = best
        elif action == "down":
            loss -= abs(loss) * rng.uniform(0.0, 0.3) + rng.uniform(0.0, 0.2)
        elif action == "nudge":  # an improvement near the threshold, either side of it
            loss -= abs(loss) * threshold * rng.uniform(0.0, 2.0)
        elif action == "up":
            loss += abs(loss) * rng.uniform(0.0, 0.3)
        losses.append(math.inf if action == "inf" else float(loss))
        best = min(best, losses[-1])
    steps = np.cumsum(rng.choice([0, 1, 1, 3, 10], size=n)).tolist()
    resume_at = int(rng.integers(0, n)) if rng.random() < 0.5 else None
    return init, settings, losses, steps, resume_at


PROBABILITIES = [0.35, 0.1, 0.2, 0.15, 0.15, 0.05]


def test_matches_torch_on_random_loss_sequences(torch):
    rng = np.random.default_rng(20240611)
    seen = dict(tried=0, taken=0, blocked=0, at_min=0, min_above_init=0, inf=0, same_step=0)
    for _ in range(500):
        init, settings, losses, steps, resume_at = random_case(rng)
        phase, rate_at, tried = follow(torch, init, losses, steps, resume_at, **settings)
        # The whole history, not only the rate just after each report: every path.
        at_steps = np.array(sorted(rate_at), dtype=np.int64)
        expected = np.array([rate_at[t] for t in at_steps])
        assert [phase(int(t)) for t in at_steps] == expected.tolist()
        assert phase(at_steps).tobytes() == expected.tobytes()
        assert (
            np.array(phase(mx.array(at_steps))).tobytes() == expected.astype(np.float32).tobytes()
        )
        seen["tried"] += tried
        seen["taken"] += len(phase.reductions)
        seen["blocked"] += tried - len(phase.reductions)
        seen["at_min"] += phase.reductions != [] and phase(steps[-1]) == settings["min_value"]
        seen["min_above_init"] += settings["min_value"] > init and tried > 0
        seen["inf"] += math.inf in losses
        seen["same_step"] += len(set(steps)) < len(steps)
    # The draws reach every rule often: a change that drops one would show here.
    assert min(seen.values()) >= 30, seen


def plain_stall(n):
    return [1.0] * n


def test_eps_stops_cuts_smaller_than_eps(torch):
    # Default eps: 1e-3 * 0.1**k reaches ~1e-8, whose cut (~9e-9) is not above 1e-8.
    phase, rate_at, tried = follow(torch, 1e-3, plain_stall(12), factor=0.1, patience=0)
    rates = [phase.at(s) for s in range(12)]
    assert tried == 11 and 0 < len(phase.reductions) < tried
    last = rates[-1]
    assert last - last * 0.1 <= 1e-8 < rates[len(phase.reductions) - 1] * 0.9
    # A large eps blocks every cut, yet each tried one restarts patience and cooldown.
    phase, _, tried = follow(
        torch, 1.0, plain_stall(12), factor=0.5, patience=1, cooldown=2, eps=0.6
    )
    assert tried == 3 and phase.reductions == [] and phase(100) == 1.0
    # A cut of exactly eps is not made either: it must be greater.
    phase, _, tried = follow(torch, 1.0, plain_stall(3), factor=0.5, patience=0, eps=0.5)
    assert tried == 2 and phase.reductions == []


def test_min_value_above_init_never_raises_the_rate(torch):
    phase = S.reduce_on_plateau(1e-3, patience=0, min_value=1e-2)
    assert phase(0) == 1e-3 and phase.values(4).tolist() == [1e-3] * 4
    phase, _, tried = follow(torch, 1e-3, plain_stall(6), patience=0, min_value=1e-2)
    assert tried == 5 and phase.reductions == [] and phase(10**6) == 1e-3


def test_a_rate_within_eps_of_min_value_stays(torch):
    close, _, tried = follow(torch, 0.05 + 5e-9, plain_stall(4), patience=0, min_value=0.05)
    assert tried == 3 and close.reductions == [] and close(10) == 0.05 + 5e-9
    # Further than eps above it: one cut, to min_value exactly.
    far, _, _ = follow(torch, 0.05 + 2e-8, plain_stall(4), patience=0, min_value=0.05)
    assert far.reductions == [1] and far(10) == 0.05


def test_each_rate_is_the_previous_times_factor(torch):
    # torch multiplies the current rate; init * factor**k rounds differently.
    phase, _, _ = follow(torch, 0.3, plain_stall(9), factor=0.7, patience=0)
    rates = [phase.at(s) for s in range(9)]
    assert all(b == a * 0.7 for a, b in zip(rates, rates[1:]))
    assert any(rate != 0.3 * 0.7**k for k, rate in enumerate(rates))
    # The float32 path (an mlx optimizer's learning_rate=) rounds these same rates once.
    steps = np.arange(9)
    assert np.array(phase(mx.array(steps))).tolist() == np.float32(rates).tolist()


INF = math.inf


@pytest.mark.parametrize(
    "losses, settings",
    [
        # rel: a gain of less than threshold * best is a stall; patience 0 cuts at once
        ([1.0, 0.99995, 0.9999, 0.99, 0.99, 0.98], dict(factor=0.5, patience=0)),
        # abs: the same against best - threshold
        (
            [1.0, 0.95, 0.85, 0.85, 0.8, 0.7, 0.7],
            dict(factor=0.5, patience=1, threshold_mode="abs", threshold=0.1),
        ),
        # cooldown: stalls in it do not count, and it starts after every cut
        ([1.0] * 12, dict(factor=0.5, patience=0, cooldown=2)),
        (
            [1.0, 2.0, 0.5, 0.5, 0.5, 0.4, 0.6, 0.6, 0.6, 0.6],
            dict(factor=0.5, patience=1, cooldown=1),
        ),
        # the first report: +inf does not beat the starting best (+inf), so it is a stall
        ([INF, INF, 1.0, INF, 1.0, 1.0], dict(factor=0.5, patience=0)),
        ([INF, 2.0, INF, INF, INF], dict(factor=0.5, patience=1, threshold_mode="abs")),
        # rel with threshold >= 1: inf * 0 is NaN and best * (1 - t) <= 0: nothing improves
        ([1.0, 0.5, 0.1, 0.01], dict(factor=0.5, patience=0, threshold=1.0)),
        ([3.0, 2.0, 1.0, 0.5, 0.1], dict(factor=0.5, patience=1, threshold=2.0)),
        # negative losses in rel mode: a tie with the best counts as an improvement
        ([-1.0, -1.0, -1.0, -0.5, -0.5], dict(factor=0.5, patience=0)),
    ],
)
def test_thresholds_cooldown_patience_and_first_reports(torch, losses, settings):
    phase, _, tried = follow(torch, 1.0, losses, **settings)
    assert tried  # each sequence makes torch try a reduction


def test_nan_and_minus_inf_are_refused_where_torch_carries_on(torch):
    theirs = TorchPlateau(torch, 1.0, patience=2)
    phase = S.reduce_on_plateau(1.0, patience=2)
    for scheduler in (theirs.sched.step, lambda loss: phase.observe(loss, 0)):
        scheduler(1.0)
    # torch counts NaN as a stall and keeps -inf as a best loss that nothing can beat.
    theirs.sched.step(float("nan"))
    assert theirs.counters == (1.0, 1, 0)
    theirs.sched.step(-INF)
    theirs.sched.step(0.0)
    assert theirs.counters == (-INF, 1, 0)
    for bad, shown in ((float("nan"), "NaN"), (-INF, "-inf"), (np.float32("nan"), "NaN")):
        with pytest.raises(ValueError, match=f"validation loss is {shown}; expected a number"):
            phase.observe(bad, 1)
    assert counters(phase) == (1.0, 0, 0)  # a refused loss changes nothing


def test_plus_inf_best_survives_a_checkpoint():
    phase = S.reduce_on_plateau(1.0, patience=3)
    phase.observe(INF, 0)
    state = json.loads(json.dumps(phase.state_dict(), allow_nan=False))
    again = S.reduce_on_plateau(1.0, patience=3)
    again.load_state_dict(state)
    assert counters(again) == (INF, 1, 0)


def test_eps_is_part_of_the_schedule_data():
    phase = S.reduce_on_plateau(1e-3, factor=0.5, patience=3, min_value=1e-6, eps=1e-5)
    spec = phase.to_dict()
    assert spec["eps"] == 1e-5
    rebuilt = S.from_dict(json.loads(json.dumps(spec)))
    assert rebuilt == phase and rebuilt.eps == 1e-5
    assert rebuilt.fingerprint() == phase.fingerprint()
    assert eval(repr(phase), vars(S)) == phase  # noqa: S307 - repr is Python source
    assert "eps=1e-05" in repr(phase)
    assert phase.fingerprint() != S.reduce_on_plateau(1e-3, 0.5, 3, min_value=1e-6).fingerprint()
    # A dict saved before eps existed loads with torch's default, and is unchanged by it,
    # so the fingerprints saved with it in callback checkpoints still match.
    old = {
        "name": "reduce_on_plateau",
        "init": 1e-3,
        "factor": 0.5,
        "patience": 3,
        "threshold": 1e-4,
        "threshold_mode": "rel",
        "cooldown": 0,
        "min_value": 0.0,
    }
    loaded = S.from_dict(old)
    assert loaded.eps == 1e-8 and loaded.to_dict() == old
    assert loaded == S.reduce_on_plateau(1e-3, factor=0.5, patience=3, eps=1e-8)
    for bad, expected in (
        (-1e-9, "eps must be >= 0, got -1e-09"),
        (math.nan, "eps must be a finite"),
        ("0", "eps must be a finite"),
    ):
        with pytest.raises(ValueError, match=expected):
            S.reduce_on_plateau(1.0, eps=bad)


def test_a_report_before_the_last_reduction_is_refused():
    phase = S.reduce_on_plateau(1.0, factor=0.5, patience=0)
    phase.observe(1.0, 5)
    assert phase.observe(1.0, 7) and phase.reductions == [7]
    assert not phase.observe(0.5, 7)  # another report at the same step is fine
    with pytest.raises(ValueError, match="step must be at least 7 .the last reduction., got 6"):
        phase.observe(0.4, 6)


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
