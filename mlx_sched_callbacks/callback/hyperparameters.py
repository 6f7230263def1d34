"""What the callback schedules besides the rate (``weight_decay``, ``momentum``, the rates of a
``MultiOptimizer``'s parts), and the checks of its arguments."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.optimizers as optim

from .. import schedules


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


def checked_arguments(schedule, optimizer, names, hyperparameters, log_every, flush_secs):
    """The callback's arguments, checked: ``(schedule, parts, names, extras)``."""
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
    return schedule, parts, names, extras


def checked_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"LRScheduleCallback: {name} must be an integer >= 1, got {value!r}.")
    return value


def store_for(optimizer, key: str, parts, names):
    """How to set the scheduled scalar ``key`` (``weight_decay``, ``learning_rate/<part>``)."""
    hyperparameter, _, name = key.partition("/")
    if parts is None and name:
        raise ValueError(
            f"LRScheduleCallback: {key!r} names a sub-optimizer, but the optimizer is "
            f"a {type(optimizer).__name__}, not a MultiOptimizer."
        )
    if parts is not None and not name:
        raise ValueError(
            f"LRScheduleCallback: with a MultiOptimizer, say which sub-optimizer: "
            f"'{hyperparameter}/<name>' with a name from {names}, got {key!r}."
        )
    if name and name not in names:
        raise ValueError(
            f"LRScheduleCallback: {key!r}: no sub-optimizer is named {name!r}; names are {names}."
        )
    target = parts[names.index(name)] if name else optimizer
    if hyperparameter == "learning_rate":

        def store(value, target=target):
            target.learning_rate = value

        return store
    return _schedule_hyperparameter(target, hyperparameter)
