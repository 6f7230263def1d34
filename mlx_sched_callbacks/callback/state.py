"""The callback's checkpoint: its step, its schedules and their state, as JSON."""

from __future__ import annotations

import os

from .. import schedules
from .._files import read_json, write_json_atomic
from ..schedules.plateau import stateful_phases
from .hyperparameters import schedule_differences

STATE_FORMAT = "mlx_sched_callbacks.LRScheduleCallback"
STATE_VERSION = 1


class CallbackState:
    """``state_dict`` / ``load_state_dict`` and their files, for :class:`LRScheduleCallback`."""

    def state_dict(self) -> dict:
        """The callback's state, JSON-safe. Flushes the log: this is a checkpoint."""
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
        if self._watch is not None and self._watch.skip_non_finite:
            state["skipped_updates"] = self.skipped_updates
            state["skips_in_a_row"] = self.skips_in_a_row
        return state

    def load_state_dict(self, state: dict, *, allow_schedule_change: bool = False) -> None:
        """Continue from ``state``. A different schedule is an error unless allowed.

        ``allow_schedule_change=True`` keeps this callback's schedules and takes the
        step (and the state of plateau phases that are still there), e.g. to extend
        a run with a longer decay.
        """
        step, saved, phases = _validate_state(state)
        skips = [state.get(name, 0) for name in ("skipped_updates", "skips_in_a_row")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in skips):
            raise ValueError(
                f"callback state: skipped update counts must be integers >= 0, got {skips}."
            )
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
        self.skipped_updates, self.skips_in_a_row = skips
        self._next_file_start = step + self.skipped_updates + 1
        self._cache_start, self._cache_rates, self._fast_steps = 0, [], 0

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
