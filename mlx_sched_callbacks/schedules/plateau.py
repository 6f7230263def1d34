"""``reduce_on_plateau``: a schedule phase that lowers the rate when validation loss stalls.

It follows torch's ``ReduceLROnPlateau`` (``mode="min"``) rule for rule and float for
float: after ``patience`` reports without an improvement beyond ``threshold``, it tries
``new = max(rate * factor, min_value)`` and takes it only if ``rate - new > eps``; either
way ``cooldown`` reports then pass before stalls count again. Each rate is the previous
one times ``factor``, in double precision, as torch computes it. Unlike torch's, it is a
schedule phase: it can be joined after a warmup, and its value is still a pure function
of the step *given the steps at which it reduced*. Those steps, with the best loss and
the counters, are its whole state: small, JSON, and saved in the callback's checkpoint,
so a resumed run keeps its patience where it was.

Feed it with ``LRScheduleCallback.on_validation(loss)`` (``MlxLmTraining`` does so with
every validation loss); reports that arrive before its phase has begun are ignored. A NaN
or -inf loss is refused: torch would count NaN as a stall and keep -inf as a best loss
that nothing beats, then cut the rate every ``patience + 1`` reports whatever comes.
"""

from __future__ import annotations

import bisect
import math

import mlx.core as mx
import numpy as np

from . import joins
from .base import Schedule, _check_int, _check_number, _check_positive_number

# torch's ReduceLROnPlateau default: a smaller cut of the rate is not made.
DEFAULT_EPS = 1e-8


class reduce_on_plateau(Schedule):  # noqa: N801 - named like the other schedules
    """``init``, multiplied by ``factor`` each time the loss stalls for ``patience`` reports."""

    name = "reduce_on_plateau"
    _fields = (
        "init",
        "factor",
        "patience",
        "threshold",
        "threshold_mode",
        "cooldown",
        "min_value",
        "eps",
    )

    def __init__(
        self,
        init: float,
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_value: float = 0.0,
        eps: float = DEFAULT_EPS,
    ):
        owner = self.name
        self.init = _check_number(owner, "init", init)
        self.factor = _check_positive_number(owner, "factor", factor)
        if self.factor >= 1:
            raise ValueError(f"{owner}: factor must be below 1, got {self.factor!r}.")
        self.patience = _check_int(owner, "patience", patience, minimum=0)
        self.threshold = _check_number(owner, "threshold", threshold)
        if self.threshold < 0:
            raise ValueError(f"{owner}: threshold must be >= 0, got {self.threshold!r}.")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}."
            )
        self.threshold_mode = threshold_mode
        self.cooldown = _check_int(owner, "cooldown", cooldown, minimum=0)
        self.min_value = _check_number(owner, "min_value", min_value)
        self.eps = _check_number(owner, "eps", eps)
        if self.eps < 0:
            raise ValueError(f"{owner}: eps must be >= 0, got {self.eps!r}.")
        self._rates = [self.init]  # the rate after 0, 1, 2, ... reductions
        self.reset()

    def to_dict(self) -> dict:
        spec = super().to_dict()
        # Schedules saved before eps existed used the default: their dicts, and so the
        # fingerprints in their checkpoints, stay as they were.
        if spec["eps"] == DEFAULT_EPS:
            del spec["eps"]
        return spec

    # -- the state ---------------------------------------------------------

    def reset(self) -> None:
        self.best = math.inf
        self.stalled = 0  # reports in a row without improvement
        self.cooldown_left = 0
        self.reductions: list[int] = []  # local steps from which each reduction applies

    def state_dict(self) -> dict:
        return {
            "best": None if math.isinf(self.best) else self.best,
            "stalled": self.stalled,
            "cooldown_left": self.cooldown_left,
            "reductions": list(self.reductions),
        }

    def load_state_dict(self, state: dict) -> None:
        try:
            best, stalled = state["best"], state["stalled"]
            cooldown_left, reductions = state["cooldown_left"], state["reductions"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"reduce_on_plateau state is missing {error}: {state!r}") from None
        if not all(isinstance(r, int) for r in reductions) or reductions != sorted(reductions):
            raise ValueError(f"reduce_on_plateau state: bad reductions {reductions!r}.")
        self.best = math.inf if best is None else float(best)
        self.stalled, self.cooldown_left = int(stalled), int(cooldown_left)
        self.reductions = list(reductions)

    def observe(self, loss: float, step: int) -> bool:
        """Take a validation loss measured after ``step`` local updates; True if it reduced.

        torch's ``ReduceLROnPlateau.step(loss)``, rule for rule.
        """
        loss = float(loss)
        if math.isnan(loss) or loss == -math.inf:
            what = "NaN" if math.isnan(loss) else "-inf"
            raise ValueError(
                f"reduce_on_plateau: the validation loss is {what}; expected a number or +inf."
            )
        if self.reductions and step < self.reductions[-1]:
            raise ValueError(
                f"reduce_on_plateau: step must be at least {self.reductions[-1]} (the last "
                f"reduction), got {step!r}."
            )
        if self.threshold_mode == "rel":
            improved = loss < self.best * (1.0 - self.threshold)
        else:
            improved = loss < self.best - self.threshold
        if improved:
            self.best, self.stalled = loss, 0
        else:
            self.stalled += 1
        if self.cooldown_left:
            self.cooldown_left -= 1
            self.stalled = 0
        if self.stalled <= self.patience:
            return False
        # As in torch, a reduction too small to take (below eps, or held up by min_value)
        # still restarts the counts and the cooldown.
        self.stalled, self.cooldown_left = 0, self.cooldown
        count = len(self.reductions)
        if self._rate(count) - self._rate(count + 1) > self.eps:
            self.reductions.append(step)
            return True
        return False

    # -- values --------------------------------------------------------------

    def _rate(self, count: int) -> float:
        """The rate after ``count`` reductions, each computed from the one before as torch does."""
        rates = self._rates
        while len(rates) <= count:
            rates.append(max(rates[-1] * self.factor, self.min_value))
        return rates[count]

    def at(self, step):
        return self._rate(bisect.bisect_right(self.reductions, step))

    def _array(self, step, xp):
        table = [self._rate(count) for count in range(len(self.reductions) + 1)]
        if xp is mx:
            count = mx.zeros(step.shape, dtype=mx.int32)
            for r in self.reductions:
                count = count + (step >= r)
            return mx.array(table, dtype=mx.float32)[count]
        count = np.searchsorted(np.asarray(self.reductions, dtype=np.int64), step, side="right")
        return np.asarray(table, dtype=np.float64)[count]


def stateful_phases(schedule: Schedule, offset: int = 0, path: str = ""):
    """Each ``(path, phase, first_step)`` of a schedule that keeps state, nested joins included."""
    if isinstance(schedule, reduce_on_plateau):
        yield path, schedule, offset
    if isinstance(schedule, joins.join_schedules):
        starts = [0, *schedule.boundaries]
        for i, (inner, start) in enumerate(zip(schedule.schedules, starts)):
            yield from stateful_phases(inner, offset + start, f"{path}.schedules[{i}]")
