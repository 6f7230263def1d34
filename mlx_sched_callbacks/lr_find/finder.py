"""The learning-rate range test for a hand-written MLX loop, and the schedule it suggests.

:class:`Measurement` takes the loss of each update as it comes, smooths it and says when
to stop; every form of the test (this loop, a :class:`~mlx_sched_callbacks.run.TrainingRun`
in :mod:`.run`) measures through it. :func:`find_lr_with_step` sets
``optimizer.learning_rate`` before each update from a rising ramp, calls the user's
``step()`` (one update on the next batch, returning the loss), and stops when the loss
diverges, when it is not finite, or on SIGINT/SIGTERM (politely: the updates measured so
far are kept and written). :func:`suggested_schedule` and :func:`lr_schedule_yaml` turn a
suggested rate into mlx-lm's ``lr_schedule`` config.

The model is trained by the test, as in any range test, and ends far from where it
started (often diverged): re-initialise it, or restore a copy of its weights and of the
optimizer state, before training for real. The test puts back only the optimizer's
learning rate.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
from dataclasses import dataclass, field

import mlx.optimizers as optim
import numpy as np

from ..callback.hyperparameters import _callable_rate_optimizers
from ..stopping import DEFAULT_SIGNALS, StopSignals, signal_name
from . import curve
from .outputs import PLOT_HINT, write_outputs

__all__ = [
    "PLOT_HINT",
    "LRFindResult",
    "Measurement",
    "find_lr_with_step",
    "lr_schedule_yaml",
    "suggested_schedule",
]

FORMAT = "mlx_sched_callbacks.lr_find"
VERSION = 1
# The largest float32: the optimizer keeps its rate in float32, where a larger one is inf.
_FLOAT32_MAX = 3.4028234663852886e38


def _finite_or_none(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]


@dataclass
class LRFindResult:
    """What a range test measured and suggests.

    ``rate``, ``loss`` and ``smoothed_loss`` hold one value per update made (index ``i`` is
    update ``i + 1``, the x of the TensorBoard curves). ``rate`` is the ramp in float64; the
    optimizer held it rounded to float32. ``reason`` says which stop fired
    (``"diverged"``, ``"loss_not_finite"`` or ``"signal"``, also when it fired at the last
    update) and ``detail`` says it in words; ``stopped_early`` is whether fewer updates
    than planned were made. ``outputs`` names the files :func:`write_outputs` wrote.
    """

    rate: np.ndarray
    loss: np.ndarray
    smoothed_loss: np.ndarray
    suggestions: dict[str, curve.Suggestion]
    chosen: str
    settings: dict
    reason: str | None = None
    detail: str = ""
    outputs: dict = field(default_factory=dict)

    @property
    def stopped_early(self) -> bool:
        return len(self.rate) < self.settings["num_steps"]

    @property
    def suggested_rate(self) -> float | None:
        """The chosen rule's rate, or ``None`` where it could not suggest one."""
        return self.suggestions[self.chosen].rate

    def to_dict(self) -> dict:
        """The result as JSON-safe data; a non-finite loss is written as ``null``."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "settings": dict(self.settings),
            "updates": len(self.rate),
            "stopped_early": self.stopped_early,
            "reason": self.reason,
            "detail": self.detail,
            "chosen": self.chosen,
            "suggested_rate": self.suggested_rate,
            "suggestions": {name: s.to_dict() for name, s in self.suggestions.items()},
            "rate": [float(r) for r in self.rate],
            "loss": _finite_or_none(self.loss),
            "smoothed_loss": _finite_or_none(self.smoothed_loss),
        }


def _check_optimizer(optimizer) -> list:
    """The optimizers whose rate the test sets (the parts of a MultiOptimizer), or an error."""
    parts = getattr(optimizer, "optimizers", None) or [optimizer]
    for part in parts:
        # First: without a rate of its own, its learning_rate raises KeyError.
        if isinstance(part, optim.Adafactor) and part.relative_step:
            raise ValueError(
                "find_lr: Adafactor was built with relative_step=True (its default), so it "
                "ignores learning_rate and the test would measure nothing. Build it with "
                "optim.Adafactor(learning_rate=0.0, relative_step=False)."
            )
    if not isinstance(optimizer, optim.Optimizer):
        raise TypeError(
            "find_lr: optimizer must be an mlx.optimizers optimizer with a learning_rate, "
            f"got {type(optimizer).__name__}."
        )
    if _callable_rate_optimizers(optimizer):
        raise ValueError(
            "find_lr: optimizer was built with a callable learning_rate; it recomputes the "
            "rate inside every update and would overwrite the test's ramp. Build it with a "
            "float, e.g. optim.AdamW(learning_rate=0.0)."
        )
    return parts


def _loss_value(value, update: int) -> float:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        raise TypeError(
            "find_lr: step() must return the loss as a float or a one-element mx.array, "
            f"got {value!r} at update {update}."
        ) from None


class Measurement:
    """A range test's settings checked, and its losses taken one update at a time.

    ``rates`` is the ramp (float64), one rate per planned update. :meth:`add` takes the
    loss of the next update and returns why to stop after it (``"diverged"``,
    ``"loss_not_finite"``) or ``None``; :meth:`result` is what was measured so far.
    """

    def __init__(
        self,
        min_lr: float = 1e-7,
        max_lr: float = 1.0,
        num_steps: int = 100,
        mode: str = "exponential",
        divergence: float | None = 4.0,
        suggest: str = "valley",
    ):
        self.rates = curve.ramp_rates(min_lr, max_lr, num_steps, mode)
        if self.rates[-1] > _FLOAT32_MAX:
            raise ValueError(
                f"max_lr must be finite in float32 (<= 3.4e38), got max_lr={max_lr!r}."
            )
        self.watch = curve.DivergenceWatch(divergence)
        if suggest not in curve.RULES:
            raise ValueError(
                f"suggest must be one of {list(curve.RULES)}, got suggest={suggest!r}."
            )
        self.suggest = suggest
        self.smoother = curve.Smoother()
        self.settings = {
            "min_lr": float(min_lr),
            "max_lr": float(max_lr),
            "num_steps": int(num_steps),
            "mode": mode,
            "divergence": self.watch.divergence,
            "beta": self.smoother.beta,
            "skip_begin": int(num_steps) // 10,
            "skip_end": curve.SKIP_END,
        }
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.reason: str | None = None
        self.detail = ""

    @property
    def updates(self) -> int:
        return len(self.losses)

    def add(self, loss: float) -> str | None:
        """Take the loss of the next update; return why the test stops after it, if it does."""
        i, rate = len(self.losses), self.rates[len(self.losses)]
        self.losses.append(loss)
        self.smoothed.append(self.smoother.update(loss))
        best = self.watch.best
        self.reason = self.watch.check(loss, self.smoothed[-1])
        where = f"at update {i + 1} (rate {rate:.4g})"
        if self.reason == "loss_not_finite":
            self.detail = f"the loss {loss!r} {where} is not finite"
        elif self.reason == "diverged":
            self.detail = (
                f"the smoothed loss {self.smoothed[-1]:.6g} {where} is above "
                f"{self.watch.divergence:g} x the best before it, {best:.6g}"
            )
        return self.reason

    def stopped_by_signal(self, signum: int, update: int) -> None:
        self.reason, self.detail = "signal", f"{signal_name(signum)} during update {update}"

    def result(self) -> LRFindResult:
        made = len(self.losses)
        return LRFindResult(
            rate=self.rates[:made].copy(),
            loss=np.array(self.losses, dtype=np.float64),
            smoothed_loss=np.array(self.smoothed, dtype=np.float64),
            suggestions=curve.suggest(
                self.rates[:made], self.smoothed, num_steps=self.settings["num_steps"]
            ),
            chosen=self.suggest,
            settings=dict(self.settings),
            reason=self.reason,
            detail=self.detail,
        )


def find_lr_with_step(
    step,
    optimizer,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_steps: int = 100,
    mode: str = "exponential",
    divergence: float | None = 4.0,
    suggest: str = "valley",
    out: str | os.PathLike | None = None,
    stop_signals=DEFAULT_SIGNALS,
) -> LRFindResult:
    """Run a learning-rate range test with ``step`` and return what it measured.

    ``step()`` makes one optimizer update on the next batch (typically an ``mx.compile``d
    function with ``inputs=outputs=[model.state, optimizer.state]``) and returns its loss
    (a float or a scalar ``mx.array``). Before update ``i`` (0-based), ``optimizer`` gets
    rate ``i`` of :func:`curve.ramp_rates(min_lr, max_lr, num_steps, mode)
    <mlx_sched_callbacks.lr_find.curve.ramp_rates>`, as a float32 scalar (a new value, no
    retrace). The optimizer must be built with a float learning rate.

    The test stops after the first update whose loss is not finite or whose smoothed loss
    exceeds ``divergence`` times the best before it (``None``: never), or after the update
    during which one of ``stop_signals`` arrived (``None`` or ``()``: signals act as usual).
    The stopping update is kept. ``suggest`` picks the rule of :attr:`LRFindResult.
    suggested_rate`: ``"valley"`` (fastai's default), ``"steep"`` or ``"minimum"``. With
    ``out``, :func:`write_outputs` writes the results there. The optimizer's learning rate
    is put back as it was; the model keeps what the test did to it.
    """
    if not callable(step):
        raise TypeError(f"find_lr: step must be a callable making one update, got {step!r}.")
    measurement = Measurement(min_lr, max_lr, num_steps, mode, divergence, suggest)
    parts = _check_optimizer(optimizer)
    signals = StopSignals(stop_signals) if stop_signals else None
    original_rates = [part.learning_rate for part in parts]
    try:
        with signals or contextlib.nullcontext():
            for i, rate in enumerate(measurement.rates):
                optimizer.learning_rate = float(rate)
                if measurement.add(_loss_value(step(), i + 1)):
                    break
                signum = signals.agreed() if signals else None
                if signum:
                    measurement.stopped_by_signal(signum, i + 1)
                    break
    finally:
        for part, original in zip(parts, original_rates):
            part.learning_rate = original
    result = measurement.result()
    if out is not None:
        write_outputs(result, out)
    return result


def _check_number(name: str, value, minimum: float, strict: bool) -> float:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real)
    if not bad:
        value = float(value)
        bad = not math.isfinite(value) or value < minimum or (strict and value == minimum)
    if bad:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}.")
    return value


def suggested_schedule(
    peak: float,
    iters: int,
    warmup: int | None = None,
    *,
    end: float | None = None,
    warmup_init: float = 0.0,
) -> dict:
    """mlx-lm's ``lr_schedule`` config for ``iters`` updates peaking at ``peak``.

    A linear warmup from ``warmup_init`` over ``warmup`` updates (``None``: ``iters // 20``,
    5%; 0: none, and the ``warmup`` keys are left out), then a cosine decay to ``end``
    (``None``: ``peak / 10`` to 12 digits) over the ``iters - warmup`` updates after it;
    mlx-lm counts the cosine's steps after the warmup (and joins the two at ``warmup + 1``).
    :func:`mlx_sched_callbacks.schedules.from_mlx_lm_config` reads it back.
    """
    peak = _check_number("peak", peak, 0.0, strict=True)
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got iters={iters!r}.")
    iters = int(iters)
    if warmup is None:
        warmup = iters // 20
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral):
        raise ValueError(f"warmup must be an integer or None, got warmup={warmup!r}.")
    if not 0 <= warmup < iters:
        raise ValueError(
            f"warmup must be in [0, iters) = [0, {iters}) so that the decay has a step, "
            f"got warmup={warmup!r}."
        )
    if end is None:
        # 12 digits: 3e-4 / 10 is 2.9999999999999997e-05, which reads badly in a config.
        end = float(f"{peak / 10:.12g}")
    end = _check_number("end", end, 0.0, strict=False)
    if end > peak:
        raise ValueError(f"end must not exceed peak={peak!r}, got end={end!r}.")
    schedule = {"name": "cosine_decay", "arguments": [peak, iters - int(warmup), end]}
    if warmup:
        schedule["warmup"] = int(warmup)
        schedule["warmup_init"] = _check_number("warmup_init", warmup_init, 0.0, strict=False)
    return schedule


def _yaml_scalar(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numbers.Real, str)):
        raise ValueError(f"lr_schedule_yaml: cannot write {value!r} as a YAML number.")
    if isinstance(value, str):
        # A JSON string is a YAML string too; a plain name needs no quotes.
        return value if value.isidentifier() else json.dumps(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if not math.isfinite(value):
        raise ValueError(f"lr_schedule_yaml: values must be finite, got {value!r}.")
    text = repr(float(value))
    mantissa, e, exponent = text.partition("e")
    # YAML 1.1 (PyYAML) reads 1e-05 as a string: its floats need a dot in the mantissa.
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def lr_schedule_yaml(schedule: dict) -> str:
    """``schedule`` (mlx-lm's ``lr_schedule`` dict) as a YAML block to paste into a config.

    Numbers are written so that PyYAML's ``safe_load`` reads back the same floats, bit for
    bit (``1.0e-05``, never ``1e-05``, which YAML 1.1 reads as text).
    """
    if not isinstance(schedule, dict) or "name" not in schedule or "arguments" not in schedule:
        raise ValueError(
            "lr_schedule_yaml: schedule must be a dict with 'name' and 'arguments', "
            f"got {schedule!r}."
        )
    lines = ["lr_schedule:"]
    for key, value in schedule.items():
        if isinstance(value, (list, tuple)):
            value = "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
        else:
            value = _yaml_scalar(value)
        lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"
