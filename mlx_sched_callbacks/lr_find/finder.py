"""The learning-rate range test for a hand-written MLX loop, its outputs, and the schedule it
suggests.

:func:`find_lr` sets ``optimizer.learning_rate`` before each update from a rising ramp,
calls the user's ``step()`` (one update on the next batch, returning the loss), and stops
when the loss diverges, when it is not finite, or on SIGINT/SIGTERM (politely: the updates
measured so far are kept and written). :func:`write_outputs` writes ``lr_find.json``,
``lr_find.png`` (with matplotlib) and a TensorBoard run. :func:`suggested_schedule` and
:func:`lr_schedule_yaml` turn a suggested rate into mlx-lm's ``lr_schedule`` config.

The model is trained by the test, as in any range test, and ends far from where it
started (often diverged): re-initialise it, or restore a copy of its weights and of the
optimizer state, before training for real. ``find_lr`` puts back only the optimizer's
learning rate.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import mlx.optimizers as optim
import numpy as np

from .._files import write_bytes_atomic, write_json_atomic
from ..callback.hyperparameters import _callable_rate_optimizers
from ..events import EventWriter
from ..stopping import DEFAULT_SIGNALS, StopSignals, signal_name
from . import curve

FORMAT = "mlx_sched_callbacks.lr_find"
VERSION = 1
JSON_NAME = "lr_find.json"
PNG_NAME = "lr_find.png"
TENSORBOARD_DIR = "tensorboard"
TAGS = {"rate": "lr_find/rate", "loss": "lr_find/loss", "smoothed_loss": "lr_find/smoothed_loss"}
PLOT_HINT = 'pip install "mlx-sched-callbacks[plot]"'
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


def find_lr(
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
    rates = curve.ramp_rates(min_lr, max_lr, num_steps, mode)
    if rates[-1] > _FLOAT32_MAX:
        raise ValueError(f"max_lr must be finite in float32 (<= 3.4e38), got max_lr={max_lr!r}.")
    watch = curve.DivergenceWatch(divergence)
    if suggest not in curve.RULES:
        raise ValueError(f"suggest must be one of {list(curve.RULES)}, got suggest={suggest!r}.")
    parts = _check_optimizer(optimizer)
    smoother = curve.Smoother()
    losses, smoothed = [], []
    reason, detail = None, ""
    signals = StopSignals(stop_signals) if stop_signals else None
    original_rates = [part.learning_rate for part in parts]
    try:
        with signals or contextlib.nullcontext():
            for i, rate in enumerate(rates):
                optimizer.learning_rate = float(rate)
                loss = _loss_value(step(), i + 1)
                losses.append(loss)
                smoothed.append(smoother.update(loss))
                best = watch.best
                reason = watch.check(loss, smoothed[-1])
                where = f"at update {i + 1} (rate {rate:.4g})"
                if reason == "loss_not_finite":
                    detail = f"the loss {loss!r} {where} is not finite"
                    break
                if reason == "diverged":
                    detail = (
                        f"the smoothed loss {smoothed[-1]:.6g} {where} is above "
                        f"{watch.divergence:g} x the best before it, {best:.6g}"
                    )
                    break
                signum = signals.agreed() if signals else None
                if signum:
                    reason, detail = "signal", f"{signal_name(signum)} during update {i + 1}"
                    break
    finally:
        for part, original in zip(parts, original_rates):
            part.learning_rate = original
    made = len(losses)
    result = LRFindResult(
        rate=rates[:made].copy(),
        loss=np.array(losses, dtype=np.float64),
        smoothed_loss=np.array(smoothed, dtype=np.float64),
        suggestions=curve.suggest(rates[:made], smoothed, num_steps=num_steps),
        chosen=suggest,
        settings={
            "min_lr": float(min_lr),
            "max_lr": float(max_lr),
            "num_steps": int(num_steps),
            "mode": mode,
            "divergence": watch.divergence,
            "beta": smoother.beta,
            "skip_begin": int(num_steps) // 10,
            "skip_end": curve.SKIP_END,
        },
        reason=reason,
        detail=detail,
    )
    if out is not None:
        write_outputs(result, out)
    return result


def write_outputs(result: LRFindResult, out: str | os.PathLike) -> dict:
    """Write ``lr_find.json``, ``lr_find.png`` and ``tensorboard/`` into ``out`` (created).

    The JSON is written atomically and holds no time or path, so equal results give equal
    bytes. The TensorBoard run has ``lr_find/rate``, ``lr_find/loss`` and
    ``lr_find/smoothed_loss`` at x = update (1-based); a run written again into the same
    folder hides the earlier one. Without matplotlib the PNG is skipped with a one-line hint
    on stderr. Returns (and stores in ``result.outputs``) the paths written, ``None`` for a
    skipped PNG, and the hint under ``"note"``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {"json": str(out / JSON_NAME), "png": None, "tensorboard": str(out / TENSORBOARD_DIR)}
    write_json_atomic(out / JSON_NAME, result.to_dict())
    # The restart marker at step 1 hides an earlier test's points written to the same run.
    writer = EventWriter(out / TENSORBOARD_DIR, start_step=1)
    try:
        for i in range(len(result.rate)):
            writer.add_scalar(TAGS["rate"], float(result.rate[i]), i + 1)
            writer.add_scalar(TAGS["loss"], float(result.loss[i]), i + 1)
            writer.add_scalar(TAGS["smoothed_loss"], float(result.smoothed_loss[i]), i + 1)
    finally:
        writer.close()
    try:
        figure = plot_result(result)
    except ImportError:
        outputs["note"] = (
            f"lr_find: {out / PNG_NAME} not drawn, matplotlib is not installed: {PLOT_HINT}"
        )
        print(outputs["note"], file=sys.stderr, flush=True)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        png = io.BytesIO()
        FigureCanvasAgg(figure).print_png(png)
        write_bytes_atomic(out / PNG_NAME, png.getvalue())
        outputs["png"] = str(out / PNG_NAME)
    result.outputs = outputs
    return outputs


def plot_result(result: LRFindResult):
    """A matplotlib ``Figure``: loss and smoothed loss against the rate (log x), each
    suggestion a vertical line, the chosen one red and solid. Needs matplotlib."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(result.rate, result.loss, color="0.7", linewidth=0.8, label="loss")
    ax.plot(result.rate, result.smoothed_loss, color="C0", linewidth=1.6, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    # The y range leaves out the last updates, which the rules do not read either: their
    # blow-up would flatten the part of the curve where the choice is made.
    shown = slice(0, max(1, len(result.rate) - result.settings["skip_end"]))
    values = np.concatenate([result.loss[shown], result.smoothed_loss[shown]])
    values = values[np.isfinite(values)]
    if len(values):
        low, high = float(values.min()), float(values.max())
        margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - margin, high + margin)
    colors = {"valley": "C2", "steep": "C1", "minimum": "C4"}
    for name, suggestion in result.suggestions.items():
        if suggestion.rate is None:
            continue
        chosen = name == result.chosen
        ax.axvline(
            suggestion.rate,
            color="red" if chosen else colors.get(name, "C3"),
            linestyle="-" if chosen else "--",
            linewidth=2.0 if chosen else 1.0,
            label=f"{name} {suggestion.rate:.3g}" + (" (chosen)" if chosen else ""),
        )
    stop = f", stopped: {result.reason}" if result.reason else ""
    ax.set_title(f"learning-rate range test, {len(result.rate)} updates{stop}")
    ax.legend(loc="best", fontsize="small")
    return figure


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
