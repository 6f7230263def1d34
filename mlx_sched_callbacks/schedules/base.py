"""What every schedule shares: the ``Schedule`` base (a pure ``step -> value`` function that
is also data) and the argument checks that name the schedule and the argument."""

from __future__ import annotations

import hashlib
import json
import math
import numbers

import mlx.core as mx
import numpy as np

# Step counts stay exact in float64 up to 2**53; beyond that a schedule cannot
# tell neighbouring steps apart, so larger values are refused as mistakes.
MAX_STEP = 2**53


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_number(owner: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: {name} must be a finite number, got {_describe(value)}.")
    try:
        value = float(value) + 0.0  # + 0.0: -0.0 and 0.0 are one value, with one fingerprint
    except OverflowError:
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}.") from None
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}.")
    return value


def _check_span(owner: str, init: float, end: float) -> None:
    if not math.isfinite(init - end):
        raise ValueError(
            f"{owner}: init - end must be a finite number, got init={init!r}, end={end!r}."
        )


def _clip(value: float, a: float, b: float) -> float:
    # Rounding must not carry a value past the ends it moves between.
    return min(max(value, a), b) if a <= b else min(max(value, b), a)


def _check_positive_number(owner: str, name: str, value) -> float:
    value = _check_number(owner, name, value)
    if value <= 0:
        raise ValueError(f"{owner}: {name} must be greater than 0, got {value!r}.")
    return value


def _check_int(owner: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{owner}: {name} must be an integer >= {minimum}, got {_describe(value)}."
        )
    value = int(value)
    if not minimum <= value <= MAX_STEP:
        raise ValueError(
            f"{owner}: {name} must be an integer in [{minimum}, 2**53], got {value!r}."
        )
    return value


def _check_step(step) -> int:
    return _check_int("schedule", "step", step, minimum=0)


class Schedule:
    """Base of every schedule: a pure ``step -> value`` function that is also data.

    Subclasses set ``name`` (the key in ``to_dict()``), ``_fields`` (constructor
    arguments in order), and implement ``at(step)`` (Python float, double precision)
    and ``_array(step, xp)`` (vectorised with ``xp`` = ``mx`` or ``np``).
    """

    name: str = ""
    _fields: tuple[str, ...] = ()

    def __call__(self, step):
        if isinstance(step, mx.array):
            return self._array(step, mx)
        if isinstance(step, np.ndarray):
            if step.dtype.kind not in "iu":
                raise ValueError(
                    f"schedule: step must be an integer array, got dtype {step.dtype}."
                )
            if step.size and (step.min() < 0 or step.max() > MAX_STEP):
                raise ValueError("schedule: steps must lie in [0, 2**53].")
            return np.asarray(self._array(step.astype(np.int64), np), dtype=np.float64)
        return self.at(_check_step(step))

    def at(self, step: int) -> float:
        """The value at ``step`` as a Python float, without argument checks."""
        raise NotImplementedError

    def _array(self, step, xp):
        raise NotImplementedError

    def values(self, num_steps: int) -> np.ndarray:
        """The values at steps ``0 .. num_steps - 1`` as a float64 numpy array."""
        num_steps = _check_int(self.name, "num_steps", num_steps, minimum=0)
        return self._values(0, num_steps)

    def _values(self, start: int, stop: int) -> np.ndarray:
        # Steps start .. stop - 1 with numpy; joins override it to skip masks.
        steps = np.arange(start, stop, dtype=np.int64)
        return np.asarray(self._array(steps, np), dtype=np.float64)

    def _at_range(self, start: int, stop: int) -> list[float]:
        """``[self.at(s) for s in range(start, stop)]``: the same floats, bit for bit.

        The callback fills its cache of rates with it; joins override it to
        hand each phase its steps without looking the phase up for every step.
        """
        at = self.at
        return [at(s) for s in range(start, stop)]

    def to_dict(self) -> dict:
        return {"name": self.name, **{f: getattr(self, f) for f in self._fields}}

    def fingerprint(self) -> str:
        """A short hash of ``to_dict()``: equal schedules have equal fingerprints."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def __eq__(self, other):
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(self.fingerprint())

    def __repr__(self):
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self.name}({args})"
