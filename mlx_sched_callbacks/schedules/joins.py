"""Schedules joined end to end, and the common warmup shapes built from joins."""

from __future__ import annotations

import bisect

import mlx.core as mx
import numpy as np

from .base import (
    MAX_STEP,
    Schedule,
    _check_int,
    _check_number,
    _describe,
)
from .decays import constant, cosine_decay, linear_schedule


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
