"""``LRScheduleCallback``: sets the optimizer's rate from a schedule, logs it, checkpoints it."""

from __future__ import annotations

import math
import os
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

from . import schedules
from ._files import read_json, write_json_atomic
from .events import EventWriter
from .stopping import DEFAULT_SIGNALS, StopSignals

STATE_FORMAT = "mlx_sched_callbacks.LRScheduleCallback"
STATE_VERSION = 1
DEFAULT_TAG = "train/learning_rate"
# Steps whose rates and arrays are made at once: 64 measured faster than 256 or 1024.
_CACHE_STEPS = 64


def _callable_rate_optimizers(optimizer) -> list:
    parts = getattr(optimizer, "optimizers", None) or [optimizer]
    return [o for o in parts if "learning_rate" in getattr(o, "_schedulers", {})]


def schedule_differences(ours, theirs, path: str = "schedule") -> list[str]:
    """Where two ``to_dict()`` trees differ, as readable ``path: a != b`` lines."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        lines = []
        for key in sorted(set(ours) | set(theirs), key=str):
            if key not in ours or key not in theirs:
                lines.append(
                    f"{path}.{key}: {ours.get(key, '<absent>')!r} != "
                    f"{theirs.get(key, '<absent>')!r}"
                )
            else:
                lines += schedule_differences(ours[key], theirs[key], f"{path}.{key}")
        return lines
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        lines = []
        for i, (a, b) in enumerate(zip(ours, theirs)):
            lines += schedule_differences(a, b, f"{path}[{i}]")
        return lines
    return [] if ours == theirs else [f"{path}: {ours!r} != {theirs!r}"]


# The largest float32: a rate beyond it would reach the optimizer as inf.
_FLOAT32_MAX = 3.4028234663852886e38

# mlx's SGD branches in Python on these (``if self.momentum <= 0``), which a traced
# step cannot do on an array: they are read as a _BranchSafeScalar.
_SGD_BRANCHES = ("momentum", "weight_decay", "dampening")


def _check_rate(value: float, what: str, step: int, schedule) -> float:
    if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
        raise ValueError(
            f"LRScheduleCallback: the schedule gives {what} {value!r} at step {step}, which "
            "is not finite in float32; refusing to hand a non-finite rate to the optimizer. "
            f"Schedule: {schedule!r}"
        )
    return value


class _BranchSafeScalar:
    """A scheduled hyperparameter as mlx's SGD reads it inside a compiled step.

    Arithmetic uses the array in ``optimizer.state`` (an input of the compiled
    step, so a new value needs no retrace); comparisons, which SGD makes in Python
    to pick a branch, use the float.
    """

    __slots__ = ("array", "value")

    def __init__(self, array, value):
        self.array, self.value = array, value

    def __mul__(self, other):
        return self.array * other

    __rmul__ = __mul__

    def __add__(self, other):
        return self.array + other

    __radd__ = __add__

    def __sub__(self, other):
        return self.array - other

    def __rsub__(self, other):
        return other - self.array

    def __le__(self, other):
        return self.value <= other

    def __lt__(self, other):
        return self.value < other

    def __ge__(self, other):
        return self.value >= other

    def __gt__(self, other):
        return self.value > other

    def __eq__(self, other):
        return self.value == other

    def __ne__(self, other):
        return self.value != other

    __hash__ = None


def _schedule_hyperparameter(optimizer, name: str):
    """Move ``optimizer.<name>`` into ``optimizer.state`` and return a setter for it.

    mlx optimizers keep hyperparameters such as ``weight_decay`` and ``momentum`` as
    Python attributes, which a compiled step bakes in as constants. Read from the
    state instead, a new value reaches the compiled step without a retrace.
    """
    values = optimizer.__dict__.setdefault("_scheduled_values", {})
    current = getattr(optimizer, name, None)
    if name not in values and (isinstance(current, bool) or not isinstance(current, (int, float))):
        known = sorted(
            k for k, v in vars(optimizer).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_")
        )  # fmt: skip
        raise ValueError(
            f"LRScheduleCallback: hyperparameters: {type(optimizer).__name__} has no scalar "
            f"hyperparameter {name!r}; it has {known}."
        )
    branched = isinstance(optimizer, optim.SGD) and name in _SGD_BRANCHES
    if name not in values:
        values[name] = float(current)
        optimizer.__dict__.pop(name, None)
        if not getattr(type(optimizer), "_reads_hyperparameters_from_state", False):
            base = type(optimizer)
            optimizer.__class__ = type(
                base.__name__, (base,), {"_reads_hyperparameters_from_state": True}
            )

        def read(self, name=name, branched=branched):
            if branched:
                return _BranchSafeScalar(self.state[name], self._scheduled_values[name])
            return self.state[name]

        setattr(type(optimizer), name, property(read))
        optimizer.state[name] = mx.array(values[name], dtype=mx.float32)
    first = {}

    def store(value: float) -> None:
        if branched:
            # The branch SGD took when the step was traced stays in the compiled
            # graph: a value of 0 there skips the term for good.
            traced = first.setdefault("value", value)
            if traced == 0 and value != 0:
                raise ValueError(
                    f"LRScheduleCallback: {type(optimizer).__name__}'s {name} was 0 at the "
                    f"first step, so mlx's compiled step skips it; it cannot become {value!r} "
                    f"later. Start the {name} schedule above 0."
                )
        values[name] = value
        optimizer.state[name] = mx.array(value, dtype=mx.float32)

    return store


def _has_state(schedule) -> bool:
    if hasattr(schedule, "state_dict"):
        return True
    return any(_has_state(inner) for inner in getattr(schedule, "schedules", ()))


class LRScheduleCallback:
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
    ):
        parts = getattr(optimizer, "optimizers", None)
        if names is not None and (parts is None or len(names) != len(parts)):
            raise ValueError(
                "LRScheduleCallback: names must name each sub-optimizer of a MultiOptimizer, "
                f"expected {len(parts) if parts else 0} names, got {names!r}."
            )
        names = names or [str(i) for i in range(len(parts or ()))]
        extras = {}
        if isinstance(schedule, dict):
            if parts is None or sorted(schedule) != sorted(names):
                raise ValueError(
                    "LRScheduleCallback: a dict of schedules needs a MultiOptimizer with one "
                    f"schedule per sub-optimizer named {names}, got keys {sorted(schedule)}."
                )
            extras = {f"learning_rate/{name}": schedule[name] for name in names}
            schedule = None
        for key, value in {**extras, **(hyperparameters or {})}.items():
            if not isinstance(value, schedules.Schedule):
                raise TypeError(
                    f"LRScheduleCallback: the schedule for {key!r} must be a schedule from "
                    f"mlx_sched_callbacks.schedules, got {value!r}."
                )
        if schedule is not None and not isinstance(schedule, schedules.Schedule):
            raise TypeError(
                "LRScheduleCallback: schedule must be a schedule from "
                "mlx_sched_callbacks.schedules (it can be saved and resumed; an "
                f"mlx.optimizers closure cannot), got {schedule!r}."
            )
        for part in getattr(optimizer, "optimizers", None) or [optimizer]:
            if isinstance(part, optim.Adafactor) and part.relative_step:
                raise ValueError(
                    "LRScheduleCallback: Adafactor was built with relative_step=True (its "
                    "default), so it computes its own step size and ignores learning_rate; "
                    "the schedule would be logged but not followed. Build it with "
                    "optim.Adafactor(learning_rate=0.0, relative_step=False) (in an "
                    "mlx_lm.lora config: optimizer_config: {adafactor: {relative_step: false}})."
                )
        if not hasattr(optimizer, "learning_rate"):
            raise TypeError(
                "LRScheduleCallback: optimizer must be an mlx.optimizers optimizer with a "
                f"learning_rate, got {type(optimizer).__name__}."
            )
        if _callable_rate_optimizers(optimizer):
            raise ValueError(
                "LRScheduleCallback: optimizer was built with a callable learning_rate; it "
                "recomputes the rate inside every update and would overwrite the "
                "callback's. Build it with a float, e.g. optim.AdamW(learning_rate=0.0), "
                "and give the schedule to the callback."
            )
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ValueError(
                f"LRScheduleCallback: log_every must be a positive integer, got {log_every!r}."
            )
        if (
            isinstance(flush_secs, bool)
            or not isinstance(flush_secs, (int, float))
            or not (0 <= flush_secs < math.inf)
        ):
            raise ValueError(
                "LRScheduleCallback: flush_secs must be a finite number of seconds >= 0, "
                f"got {flush_secs!r}."
            )
        self.schedule = schedule
        self.optimizer = optimizer
        self.names = names
        self._extras = []  # (key, schedule, store) for every scalar besides the main rate
        for key, value in {**extras, **(hyperparameters or {})}.items():
            self._extras.append((key, value, self._store_for(key, parts, names)))
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

    # -- the two hooks -----------------------------------------------------

    @property
    def schedule(self) -> schedules.Schedule:
        return self._schedule

    @property
    def schedules(self) -> dict[str, schedules.Schedule]:
        """Every schedule the callback follows, by key (``"learning_rate"`` for the main one)."""
        main = {} if self._schedule is None else {"learning_rate": self._schedule}
        return {**main, **{key: schedule for key, schedule, _ in self._extras}}

    def _store_for(self, key: str, parts, names):
        hyperparameter, _, name = key.partition("/")
        if parts is None and name:
            raise ValueError(
                f"LRScheduleCallback: {key!r} names a sub-optimizer, but the optimizer is "
                f"a {type(self._optimizer).__name__}, not a MultiOptimizer."
            )
        if parts is not None and not name:
            raise ValueError(
                f"LRScheduleCallback: with a MultiOptimizer, say which sub-optimizer: "
                f"'{hyperparameter}/<name>' with a name from {names}, got {key!r}."
            )
        if name and name not in names:
            raise ValueError(
                f"LRScheduleCallback: {key!r}: no sub-optimizer is named {name!r}; "
                f"names are {names}."
            )
        target = parts[names.index(name)] if name else self._optimizer
        if hyperparameter == "learning_rate":

            def store(value, target=target):
                target.learning_rate = value

            return store
        return _schedule_hyperparameter(target, hyperparameter)

    @schedule.setter
    def schedule(self, schedule: schedules.Schedule) -> None:
        self._schedule = schedule
        self._cache_start, self._cache_rates = 0, []  # refilled at the next step
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
        self._cache_start, self._cache_rates = 0, []  # refilled at the next step

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

    def on_step_begin(self) -> float:
        """Set ``optimizer.learning_rate`` for the coming update and return it."""
        self._rate_set_for = self.step
        if self._extras:
            return self._set_extras()
        i = self.step - self._cache_start
        if not 0 <= i < len(self._cache_rates):
            self._fill_cache()
            i = 0
        if self._store_directly:
            self._optimizer.state["learning_rate"] = self._cache_arrays[i]
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
        """Count the update just made; log its rate if this step is due."""
        self.step += 1
        if self._extras:
            if self.step % self.log_every == 0 and self.log_dir is not None:
                if self._main_rate is not None:
                    self.log_scalar(self.tag, self._main_rate, self.step)
                for (key, _, _), value in zip(self._extras, self._extra_values):
                    self.log_scalar(f"train/{key}", value, self.step)
            return
        if self.step % self.log_every == 0 and self.log_dir is not None:
            i = self.step - 1 - self._cache_start
            if 0 <= i < len(self._cache_rates):
                rate = self._cache_rates[i]
            else:
                rate = self._schedule.at(self.step - 1)
            self.log_scalar(self.tag, rate, self.step)

    def on_validation(self, loss: float) -> bool:
        """Feed a validation loss to every ``reduce_on_plateau`` phase that has begun.

        Call it between updates. A reduction applies from the first update whose
        rate is not set yet. Returns True if a phase lowered its rate.
        """
        from .plateau import stateful_phases

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

    # -- stopping ----------------------------------------------------------

    def catch_signals(self, signals=DEFAULT_SIGNALS) -> StopSignals:
        """A context manager under which SIGINT and SIGTERM ask for a stop instead of killing.

        For a hand-written loop: ask :attr:`stop_requested` after each update, and
        when it is set, checkpoint and exit with ``128 + signal`` (130 for Ctrl-C,
        143 for SIGTERM). A second Ctrl-C aborts at once; the previous handlers
        come back when the block ends::

            with callback, callback.catch_signals():
                for step in range(callback.step, total):
                    ...
                    if signum := callback.stop_requested:
                        save_checkpoint()
                        raise SystemExit(128 + signum)
        """
        self._signals = StopSignals(signals)
        return self._signals

    @property
    def stop_requested(self) -> int | None:
        """The signal that asked for a stop, or ``None``; see :meth:`catch_signals`.

        In a distributed run, read it on every rank at the same step: a signal
        reaching any rank is seen by all of them there.
        """
        return None if self._signals is None else self._signals.agreed()

    # -- TensorBoard -------------------------------------------------------

    @property
    def writer(self) -> EventWriter | None:
        """The open event writer, opened on first use; ``None`` without a ``log_dir``."""
        if self.log_dir is None:
            return None
        if self._writer is None or self._writer.closed:
            # The writer's own thread pushes every flush_secs; with 0, log_scalar does.
            self._writer = EventWriter(
                self.log_dir, start_step=self._next_file_start, push_every=self.flush_secs or None
            )
        return self._writer

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """Log another value into the same run, on the same x-axis."""
        writer = self._writer
        if writer is None or writer.closed:
            writer = self.writer
        if writer is not None:
            try:
                writer.add_scalar(tag, float(value), step)
                if not self.flush_secs:
                    writer.push()
            except OSError as error:
                raise _naming(error, writer) from error

    def flush(self) -> None:
        """Put every logged point on disk."""
        if self._writer is not None and not self._writer.closed:
            try:
                self._writer.flush()
            except OSError as error:
                raise _naming(error, self._writer) from error

    def close(self) -> None:
        """Put every logged point on disk and close the event file."""
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as error:
                raise _naming(error, self._writer) from error
        self._next_file_start = self.step + 1

    def abandon_log(self) -> None:
        """Stop logging after a write failed: close the event file, whatever it says."""
        self.log_dir = None
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict:
        """The callback's state, JSON-safe. Flushes the log: this is a checkpoint."""
        from .plateau import stateful_phases

        self.flush()
        main = self._schedule
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "schedule": None if main is None else main.to_dict(),
            "schedule_fingerprint": None if main is None else main.fingerprint(),
        }
        if self._extras:
            state["schedules"] = {key: s.to_dict() for key, s, _ in self._extras}
            state["fingerprints"] = {key: s.fingerprint() for key, s, _ in self._extras}
        phases = {
            f"{key}{path}": phase.state_dict()
            for key, schedule in self.schedules.items()
            for path, phase, _ in stateful_phases(schedule)
        }
        if phases:
            state["schedule_state"] = phases
        return state

    def load_state_dict(self, state: dict, *, allow_schedule_change: bool = False) -> None:
        """Continue from ``state``. A different schedule is an error unless allowed.

        ``allow_schedule_change=True`` keeps this callback's schedules and takes the
        step (and the state of plateau phases that are still there), e.g. to extend
        a run with a longer decay.
        """
        from .plateau import stateful_phases

        step, saved, phases = _validate_state(state)
        ours = {key: s.to_dict() for key, s in self.schedules.items()}
        theirs = {key: s.to_dict() for key, s in saved.items()}
        if ours != theirs and not allow_schedule_change:
            if list(ours) == ["learning_rate"] == list(theirs):
                differences = schedule_differences(theirs["learning_rate"], ours["learning_rate"])
            else:
                differences = schedule_differences(theirs, ours, "schedules")
            raise ValueError(
                "LRScheduleCallback: the checkpoint's schedule differs from this "
                "callback's (checkpoint != callback):\n  "
                + "\n  ".join(differences)
                + "\nPass allow_schedule_change=True to continue with the new schedule."
            )
        found = {
            f"{key}{path}": phase
            for key, schedule in self.schedules.items()
            for path, phase, _ in stateful_phases(schedule)
        }
        for where, phase in found.items():
            if where in phases:
                phase.load_state_dict(phases[where])
            elif not allow_schedule_change:
                raise ValueError(f"callback state has no state for the phase at {where}.")
            else:
                phase.reset()
        self.close()
        self.step = step
        self._next_file_start = step + 1
        self._cache_start, self._cache_rates = 0, []

    def save(self, path: str | os.PathLike) -> None:
        """Write ``state_dict()`` to ``path`` as JSON, atomically."""
        write_json_atomic(path, self.state_dict())

    def load(self, path: str | os.PathLike, *, allow_schedule_change: bool = False) -> None:
        """Read a file written by :meth:`save` and continue from it."""
        state = read_json(path, "callback state")
        try:
            self.load_state_dict(state, allow_schedule_change=allow_schedule_change)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _naming(error: OSError, writer: EventWriter) -> OSError:
    """``error`` with the event file it happened to, for a message that names it."""
    return OSError(
        error.errno, f"cannot write TensorBoard events {writer.path}: {error.strerror or error}"
    )


def _validate_state(state) -> tuple[int, dict[str, schedules.Schedule], dict]:
    if not isinstance(state, dict):
        raise ValueError(f"callback state must be a JSON object, got {type(state).__name__}.")
    if state.get("format") != STATE_FORMAT:
        raise ValueError(
            f"callback state has format {state.get('format')!r}, expected {STATE_FORMAT!r}."
        )
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"callback state has version {state.get('version')!r}; this release reads "
            f"version {STATE_VERSION}."
        )
    missing = [k for k in ("step", "schedule", "schedule_fingerprint") if k not in state]
    if missing:
        raise ValueError(f"callback state is missing field(s) {missing}.")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"callback state: step must be an integer >= 0, got {step!r}.")
    specs, fingerprints = dict(state.get("schedules", {})), dict(state.get("fingerprints", {}))
    if state["schedule"] is not None:
        specs = {"learning_rate": state["schedule"], **specs}
        fingerprints = {"learning_rate": state["schedule_fingerprint"], **fingerprints}
    saved = {}
    for key, spec in specs.items():
        saved[key] = schedules.from_dict(spec)
        if saved[key].fingerprint() != fingerprints.get(key):
            name = "schedule_fingerprint" if key == "learning_rate" else f"fingerprints[{key!r}]"
            raise ValueError(
                f"callback state: {name} does not match its schedule "
                f"({fingerprints.get(key)!r} != {saved[key].fingerprint()!r}); "
                "the file was edited or corrupted."
            )
    phases = state.get("schedule_state", {})
    if not isinstance(phases, dict):
        raise ValueError(f"callback state: schedule_state must be an object, got {phases!r}.")
    return step, saved, phases
