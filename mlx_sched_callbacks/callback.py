"""``LRScheduleCallback``: sets the optimizer's rate from a schedule, logs it, checkpoints it."""

from __future__ import annotations

import math
import os
import time
import weakref
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim

from . import schedules
from ._files import read_json, write_json_atomic
from .events import EventWriter

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
    ):
        if not isinstance(schedule, schedules.Schedule):
            raise TypeError(
                "LRScheduleCallback: schedule must be a schedule from "
                "mlx_sched_callbacks.schedules (it can be saved and resumed; an "
                f"mlx.optimizers closure cannot), got {schedule!r}."
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
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.log_every = log_every
        self.tag = tag
        self.flush_secs = flush_secs
        self._next_push = 0.0
        self.step = 0
        # The first step the next event file will hold; its restart marker hides
        # what earlier files of the run hold from there on.
        self._next_file_start = 1
        self._writer: EventWriter | None = None
        self._close_at_exit = None

    # -- the two hooks -----------------------------------------------------

    @property
    def schedule(self) -> schedules.Schedule:
        return self._schedule

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
        if not all(map(math.isfinite, rates)):
            # Stop before the first non-finite rate: the refill there raises.
            rates = rates[: [math.isfinite(r) for r in rates].index(False)]
            if not rates:
                raise ValueError(
                    f"LRScheduleCallback: the schedule gives learning rate "
                    f"{self._schedule.at(start)!r} at step {start}; refusing to hand a "
                    f"non-finite rate to the optimizer. Schedule: {self._schedule!r}"
                )
        self._cache_start, self._cache_rates = start, rates
        # What `optimizer.learning_rate = rate` stores: mx.array(rate), float32, shape ().
        self._cache_arrays = [mx.array(rate) for rate in rates] if self._store_directly else []

    def on_step_begin(self) -> float:
        """Set ``optimizer.learning_rate`` for the coming update and return it."""
        i = self.step - self._cache_start
        if not 0 <= i < len(self._cache_rates):
            self._fill_cache()
            i = 0
        if self._store_directly:
            self._optimizer.state["learning_rate"] = self._cache_arrays[i]
        else:
            self._optimizer.learning_rate = self._cache_rates[i]
        return self._cache_rates[i]

    def on_step_end(self) -> None:
        """Count the update just made; log its rate if this step is due."""
        self.step += 1
        if self.step % self.log_every == 0 and self.log_dir is not None:
            i = self.step - 1 - self._cache_start
            if 0 <= i < len(self._cache_rates):
                rate = self._cache_rates[i]
            else:
                rate = self._schedule.at(self.step - 1)
            self.log_scalar(self.tag, rate, self.step)

    # -- TensorBoard -------------------------------------------------------

    @property
    def writer(self) -> EventWriter | None:
        """The open event writer, opened on first use; ``None`` without a ``log_dir``."""
        if self.log_dir is None:
            return None
        if self._writer is None or self._writer.closed:
            self._writer = EventWriter(self.log_dir, start_step=self._next_file_start)
            self._close_at_exit = weakref.finalize(self, self._writer.close)
        return self._writer

    def log_scalar(self, tag: str, value: float, step: int) -> None:
        """Log another value into the same run, on the same x-axis."""
        writer = self._writer
        if writer is None or writer.closed:
            writer = self.writer
        if writer is not None:
            writer.add_scalar(tag, float(value), step)
            now = time.monotonic()
            if now >= self._next_push:
                writer.push()
                self._next_push = now + self.flush_secs

    def flush(self) -> None:
        """Put every logged point on disk."""
        if self._writer is not None and not self._writer.closed:
            self._writer.flush()

    def close(self) -> None:
        """Put every logged point on disk and close the event file."""
        if self._writer is not None:
            self._writer.close()
        self._next_file_start = self.step + 1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- checkpoints -------------------------------------------------------

    def state_dict(self) -> dict:
        """The callback's state, JSON-safe. Flushes the log: this is a checkpoint."""
        self.flush()
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "schedule": self.schedule.to_dict(),
            "schedule_fingerprint": self.schedule.fingerprint(),
        }

    def load_state_dict(self, state: dict, *, allow_schedule_change: bool = False) -> None:
        """Continue from ``state``. A different schedule is an error unless allowed.

        ``allow_schedule_change=True`` keeps this callback's schedule and only takes
        the step, e.g. to extend a run with a longer decay.
        """
        step, saved_schedule = _validate_state(state)
        if saved_schedule != self.schedule and not allow_schedule_change:
            differences = schedule_differences(saved_schedule.to_dict(), self.schedule.to_dict())
            raise ValueError(
                "LRScheduleCallback: the checkpoint's schedule differs from this "
                "callback's (checkpoint != callback):\n  "
                + "\n  ".join(differences)
                + "\nPass allow_schedule_change=True to continue with the new schedule."
            )
        self.close()
        self.step = step
        self._next_file_start = step + 1

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


def _validate_state(state) -> tuple[int, schedules.Schedule]:
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
    saved_schedule = schedules.from_dict(state["schedule"])
    if saved_schedule.fingerprint() != state["schedule_fingerprint"]:
        raise ValueError(
            "callback state: schedule_fingerprint does not match its schedule "
            f"({state['schedule_fingerprint']!r} != {saved_schedule.fingerprint()!r}); "
            "the file was edited or corrupted."
        )
    return step, saved_schedule
