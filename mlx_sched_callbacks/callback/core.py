"""``LRScheduleCallback``: sets the optimizer's rate from a schedule, logs it, checkpoints it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

from .. import schedules
from ..events import EventWriter
from ..schedules.plateau import stateful_phases
from ..stopping import CatchesSignals, StopSignals
from .gradients import GradientWatch, WatchesGradients
from .hyperparameters import (
    _FLOAT32_MAX,
    _check_rate,
    _has_state,
    checked_arguments,
    checked_count,
    store_for,
)
from .log import EventLog
from .state import CallbackState

DEFAULT_TAG = "train/learning_rate"
# Updates skipped in a row before the guard gives up: a few bad batches pass, a diverged run stops.
DEFAULT_MAX_SKIPPED_UPDATES = 10
# Steps whose rates and arrays are made at once: 64 measured faster than 256 or 1024.
_CACHE_STEPS = 64


class LRScheduleCallback(EventLog, CallbackState, CatchesSignals, WatchesGradients):
    """Owns a schedule and sets ``optimizer.learning_rate`` before every update.

    The unit is one optimizer update (with gradient accumulation, one update may
    take several forward and backward passes). Before update ``n`` (0-based),
    :meth:`on_step_begin` sets ``optimizer.learning_rate = schedule(n)``: the rate
    mlx would use had the schedule been given to the optimizer. :meth:`on_step_end`
    counts the update and logs the rate it used to TensorBoard under ``tag`` at
    x = the update count after the update (1-based, as mlx-lm's ``iteration``),
    every ``log_every`` updates.

    ``state_dict()`` / ``save()`` are checkpoints: every logged point up to the
    current step is on disk when they return. After ``load_state_dict()`` /
    ``load()`` the next event file starts with a restart marker, so a resumed run
    draws one clean curve in the same ``log_dir``.

    Points reach the file at least every ``flush_secs`` seconds (0: at every
    point), so TensorBoard shows a live curve and a killed process loses at most
    that much of its log after its last checkpoint. Use it as a context manager,
    or call :meth:`close`, to put every point on disk.

    More than one scalar can follow a schedule, with the same guarantees (no
    retrace, logged on the same axis, checkpointed):

    * an ``mlx.optimizers.MultiOptimizer`` takes ``schedule={name: schedule}``, one
      per sub-optimizer in order, named by ``names`` (default ``"0"``, ``"1"``, ...),
      logged as ``train/learning_rate/<name>``;
    * ``hyperparameters={"weight_decay": schedule}`` schedules another scalar the
      optimizer keeps (AdamW's ``weight_decay``, SGD's ``momentum``), logged as
      ``train/weight_decay``; for a sub-optimizer, ``"weight_decay/<name>"``.

    A ``reduce_on_plateau`` phase anywhere in a schedule is fed by
    :meth:`on_validation`.
    """

    def __init__(
        self,
        schedule: schedules.Schedule,
        optimizer,
        log_dir: str | os.PathLike | None = None,
        *,
        log_every: int = 1,
        tag: str = DEFAULT_TAG,
        flush_secs: float = 10.0,
        hyperparameters: dict[str, schedules.Schedule] | None = None,
        names: list[str] | None = None,
        log_grad_norm: bool = False,
        max_grad_norm: float | None = None,
        skip_non_finite: bool = False,
        max_skipped_updates: int = DEFAULT_MAX_SKIPPED_UPDATES,
    ):
        schedule, parts, names, extras = checked_arguments(
            schedule, optimizer, names, hyperparameters, log_every, flush_secs
        )
        self.schedule = schedule
        self.optimizer = optimizer
        self.names = names
        self._extras = []  # (key, schedule, store) for every scalar besides the main rate
        for key, value in {**extras, **(hyperparameters or {})}.items():
            self._extras.append((key, value, store_for(self._optimizer, key, parts, names)))
        self._main_rate, self._extra_values = None, [0.0] * len(self._extras)
        self._rate_set_for = -1
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.log_every = log_every
        self.tag = tag
        self.flush_secs = flush_secs
        self.step = 0
        # The first step the next event file will hold; its restart marker hides
        # what earlier files of the run hold from there on.
        self._next_file_start = 1
        self._writer: EventWriter | None = None
        self._signals: StopSignals | None = None
        self._watch = None
        if log_grad_norm or max_grad_norm is not None or skip_non_finite:
            self._watch = GradientWatch(
                optimizer, max_grad_norm=max_grad_norm, skip_non_finite=skip_non_finite
            )
        self.max_skipped_updates = checked_count("max_skipped_updates", max_skipped_updates)
        self.skipped_updates = 0  # updates skipped as non-finite, in all
        self.skips_in_a_row = 0

    # -- the two hooks -----------------------------------------------------

    @property
    def schedule(self) -> schedules.Schedule:
        return self._schedule

    @property
    def schedules(self) -> dict[str, schedules.Schedule]:
        """Every schedule the callback follows, by key (``"learning_rate"`` for the main one)."""
        main = {} if self._schedule is None else {"learning_rate": self._schedule}
        return {**main, **{key: schedule for key, schedule, _ in self._extras}}

    @schedule.setter
    def schedule(self, schedule: schedules.Schedule) -> None:
        self._schedule = schedule
        self._cache_start, self._cache_rates, self._fast_steps = (
            0,
            [],
            0,
        )  # refilled at the next step
        # A phase with state (reduce_on_plateau) can change the rates of later
        # steps at any time: those rates are computed one step at a time.
        self._cache_steps = 1 if _has_state(schedule) else _CACHE_STEPS

    @property
    def optimizer(self):
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer) -> None:
        self._optimizer = optimizer
        # Optimizers whose learning_rate setter is not mlx's own (MultiOptimizer
        # sets each part) get the setter called.
        setter = getattr(type(optimizer), "learning_rate", None)
        self._store_directly = setter is optim.Optimizer.learning_rate
        self._cache_start, self._cache_rates, self._fast_steps = (
            0,
            [],
            0,
        )  # refilled at the next step

    def _fill_cache(self) -> None:
        # The rates of the next steps and the float32 arrays the optimizer will
        # hold, made in one go: cheaper per step (a join finds its phase once).
        # They are schedule.at(step) exactly, from whatever step the run starts
        # or resumes at.
        start = self.step
        try:
            rates = self._schedule._at_range(start, start + self._cache_steps)
        except Exception:  # maybe at a later step: let that step fail when it comes
            rates = [self._schedule.at(start)]
        usable = [math.isfinite(r) and abs(r) <= _FLOAT32_MAX for r in rates]
        if not all(usable):
            # Stop before the first unusable rate: the refill there raises.
            rates = rates[: usable.index(False)]
            if not rates:
                _check_rate(self._schedule.at(start), "learning rate", start, self._schedule)
        self._cache_start, self._cache_rates = start, rates
        # What `optimizer.learning_rate = rate` stores: mx.array(rate), float32, shape ().
        self._cache_arrays = [mx.array(rate) for rate in rates] if self._store_directly else []
        # The dict the rate goes into, looked up once per refill (the optimizer's state
        # property is a call); on_step_begin's short path serves the steps cached.
        self._state = self._optimizer.state
        self._fast_steps = len(self._cache_arrays) if not self._extras else 0

    def on_step_begin(self) -> float:
        """Set ``optimizer.learning_rate`` for the coming update and return it."""
        step = self._rate_set_for = self.step
        i = step - self._cache_start
        if 0 <= i < self._fast_steps:  # the common case, kept short: it runs every update
            self._state["learning_rate"] = self._cache_arrays[i]
            return self._cache_rates[i]
        if self._extras:
            return self._set_extras()
        if not 0 <= i < len(self._cache_rates):
            self._fill_cache()
            i = 0
        if self._store_directly:
            self._state["learning_rate"] = self._cache_arrays[i]
        else:
            self._optimizer.learning_rate = self._cache_rates[i]
        return self._cache_rates[i]

    def _set_extras(self) -> float:
        # Computed first, stored after: a refused value leaves every scalar as it was.
        step = self.step
        values = [
            _check_rate(schedule.at(step), key, step, schedule) for key, schedule, _ in self._extras
        ]
        main = None
        if self._schedule is not None:
            main = _check_rate(self._schedule.at(step), "learning rate", step, self._schedule)
            self._optimizer.learning_rate = main
        for (_, _, store), value in zip(self._extras, values):
            store(value)
        self._main_rate, self._extra_values = main, values
        return values[0] if main is None else main

    def on_step_end(self) -> None:
        """Count the update just made; log its rate if this step is due.

        With the non-finite guard on, an update that was skipped is counted apart: the
        schedule stays where it was, and the x-axis (updates made) moves on.
        """
        if self._watch is not None:
            if self._watch.skipped():
                return self._skipped()
            self.skips_in_a_row = 0
        self.step += 1
        update = self.step + self.skipped_updates
        if update % self.log_every == 0 and self.log_dir is not None:
            self._log_update(update)

    def _log_update(self, update: int) -> None:
        if self._extras:
            if self._main_rate is not None:
                self.log_scalar(self.tag, self._main_rate, update)
            for (key, _, _), value in zip(self._extras, self._extra_values):
                self.log_scalar(f"train/{key}", value, update)
        else:
            i = self.step - 1 - self._cache_start
            if 0 <= i < len(self._cache_rates):
                rate = self._cache_rates[i]
            else:
                rate = self._schedule.at(self.step - 1)
            self.log_scalar(self.tag, rate, update)
        if self._watch is not None:
            self.log_scalar("train/grad_norm", self._watch.norm(), update)

    def on_validation(self, loss: float) -> bool:
        """Feed a validation loss to every ``reduce_on_plateau`` phase that has begun.

        Call it between updates. A reduction applies from the first update whose
        rate is not set yet. Returns True if a phase lowered its rate.
        """
        # The first update whose rate is not set yet: mid-way through an accumulation
        # group, the group's update already has its rate.
        step = self.step + (self._rate_set_for == self.step)
        # Schedules with such phases are read afresh at every step (see the schedule
        # setter), so a reduction needs nothing more here.
        reduced = False
        for schedule in self.schedules.values():
            for _, phase, first_step in stateful_phases(schedule):
                if step >= first_step:
                    reduced |= phase.observe(loss, step - first_step)
        return reduced
