"""The range test on a trainer: a :class:`~mlx_sched_callbacks.run.TrainingRun` adapter run
under the ramp, and :func:`find_lr`, the one public entry for both forms of the test.

The run is the trainer's own (mlx-lm, mlx-lm-lora, mlx-vlm, or any adapter), unmodified:
the ramp is a schedule like any other, set by the run's callback at every update boundary
(so gradient accumulation is respected), and the losses are the trainer's own reports,
one per optimizer update. The stop is :meth:`TrainingRun.request_stop`: the run leaves the
trainer at the next update boundary, as after a polite stop.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from ..callback import LRScheduleCallback
from ..run import TrainingRun
from ..schedules.base import Schedule
from ..stopping import DEFAULT_SIGNALS, TrainingStopped
from .finder import LRFindResult, Measurement, find_lr_with_step
from .outputs import write_outputs

__all__ = ["RampSchedule", "find_lr", "find_lr_on_run"]


class RampSchedule(Schedule):
    """The range test's rates as a schedule: ``rates[step]``, then the last rate held."""

    name = "lr_find_ramp"
    _fields = ("min_lr", "max_lr", "num_steps", "mode")

    def __init__(self, rates: np.ndarray, min_lr: float, max_lr: float, mode: str):
        self.rates = np.asarray(rates, dtype=np.float64)
        self.min_lr, self.max_lr, self.mode = float(min_lr), float(max_lr), mode
        self.num_steps = len(self.rates)

    def at(self, step: int) -> float:
        return float(self.rates[min(step, self.num_steps - 1)])

    def _array(self, step, xp):
        return xp.array(self.rates)[xp.minimum(step, self.num_steps - 1)]


class _Losses:
    """The trainer's reports, one per update, fed to the measurement (a TrainingCallback)."""

    def __init__(self, run: TrainingRun, measurement: Measurement):
        self.run, self.measurement = run, measurement

    def on_train_loss_report(self, info: dict) -> None:
        update = self.run.x(info["iteration"])
        if update != self.measurement.updates + 1:
            raise RuntimeError(
                f"find_lr: the trainer reported update {update} after update "
                f"{self.measurement.updates}; it must report every optimizer update."
            )
        if self.measurement.add(float(info["train_loss"])):
            self.run.request_stop(f"lr_find: {self.measurement.detail}")

    def on_val_loss_report(self, info: dict) -> None:
        """Never called: the test runs without validation."""


def find_lr_on_run(
    run: TrainingRun,
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
    """Run the range test on ``run``, a :class:`TrainingRun` adapter that has not trained.

    ``run`` is built as for training (its schedule and ``log_dir`` do not matter: the test
    replaces its callback) with ``steps_per_report`` equal to ``grad_accumulation_steps``,
    so that the trainer reports every optimizer update. The test makes it a run of
    ``num_steps`` updates under the ramp with no validation, no checkpoints, no log of
    its own and no chained callback, and trains it: the trainer may still write its own
    adapter file at ``args.adapter_file`` when it ends. SIGINT or SIGTERM stop it at the
    end of the update under way; what was measured is returned (``reason="signal"``).
    """
    measurement = Measurement(min_lr, max_lr, num_steps, mode, divergence, suggest)
    k = run.args.grad_accumulation_steps
    if run.args.steps_per_report != k:
        raise ValueError(
            "find_lr: the run must report every optimizer update: build it with "
            f"steps_per_report equal to grad_accumulation_steps={k}, got "
            f"steps_per_report={run.args.steps_per_report}."
        )
    if run.iteration:
        raise ValueError(
            f"find_lr: the run has already trained {run.iteration} iterations; give a run "
            "that has not trained (a range test starts from the model as built)."
        )
    iters = measurement.settings["num_steps"] * k
    run.args = copy.copy(run.args)  # the caller's args object is left as it was
    run.args.iters, run.args.steps_per_save = iters, iters
    run.val_dataset = None
    run.write_checkpoints = False
    run.log_dir = None
    run.stop_signals = tuple(stop_signals or ())
    run.resume_command = "a new range test (a range test does not resume)"
    run.next_callback = _Losses(run, measurement)
    ramp = RampSchedule(measurement.rates, min_lr, max_lr, mode)
    run.callback = LRScheduleCallback(ramp, run.optimizer)
    original_rate = run.optimizer.learning_rate
    try:
        run.train()
    except TrainingStopped as stopped:
        if stopped.code < 128:  # not a signal: a failure, said by the run
            raise
        measurement.stopped_by_signal(stopped.code - 128, measurement.updates)
    finally:
        run.optimizer.learning_rate = original_rate
    result = measurement.result()
    if out is not None:
        write_outputs(result, out)
    return result


def find_lr(
    target,
    optimizer=None,
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
    """A learning-rate range test (as Lightning's ``Tuner.lr_find``, fastai's ``lr_find``).

    Two forms, one set of settings and one result:

    * ``find_lr(run)``: ``run`` is a :class:`~mlx_sched_callbacks.run.TrainingRun` adapter
      (``MlxLmTraining``, ``MlxLmLoraTraining``, ``MlxVlmTraining``, or your own), built as
      for training with ``steps_per_report`` equal to ``grad_accumulation_steps``; the
      trainer runs unmodified under the ramp (see :func:`find_lr_on_run`);
    * ``find_lr(step, optimizer)``: a hand-written loop, ``step()`` making one update and
      returning its loss (see :func:`~.finder.find_lr_with_step`).

    Update ``i`` (0-based) uses ``min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))``
    (``mode="linear"``: evenly spaced). The loss of each update is smoothed (debiased
    moving average, beta 0.98); the test stops after the first update whose smoothed loss
    exceeds ``divergence`` times the best before it, whose loss is not finite, or during
    which SIGINT or SIGTERM arrived. Returns an :class:`LRFindResult`: the curve, the
    ``valley``, ``steep`` and ``minimum`` suggestions and the chosen one (``suggest``);
    with ``out``, ``lr_find.json``, ``lr_find.png`` and ``tensorboard/`` are written there.
    The model ends as the test left it (trained, often diverged).
    """
    settings = dict(
        min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, mode=mode, divergence=divergence,
        suggest=suggest, out=out, stop_signals=stop_signals,
    )  # fmt: skip
    if isinstance(target, TrainingRun):
        if optimizer is not None:
            raise TypeError("find_lr: a TrainingRun brings its own optimizer; give no optimizer.")
        return find_lr_on_run(target, **settings)
    return find_lr_with_step(target, optimizer, **settings)
