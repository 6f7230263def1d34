"""What every trainer shares: counting, the rate at update boundaries, checkpoints and resume.

A trainer of the mlx-lm family runs its own loop and has no per-step hook, but it
pulls one batch per iteration from a function it is given (or that its module
calls). An adapter wraps that function: it calls :meth:`TrainingRun.before_next_batch`
when the trainer asks for a batch, before drawing it, and
:meth:`TrainingRun.begin_iteration` before handing it over; everything else lives here:

* iterations and optimizer updates are counted on the run's global count, and
  the schedule's rate is set at the start of every accumulation group;
* validation and the trainer's numbered adapter saves happen on that count, so a
  resumed run keeps them where an uninterrupted run has them;
* a checkpoint (adapters, optimizer state, callback state, the trainer's data
  position and mlx's random key on every rank) is written
  every ``steps_per_save`` iterations, at the end, and at a polite stop (SIGINT,
  SIGTERM); only rank 0 writes. State is carried, never reconstructed: nothing is
  reseeded, so a checkpoint changes nothing in the run that writes it;
* the trainer is called in segments that end on its report grid (and at
  checkpoints off that grid), so that after any resume its reports land on the
  iterations of an uninterrupted run and the trained tokens are known at every
  checkpoint; a polite stop shortens the call under way so that the trainer
  reports the iterations it ran before it stops;
* ``resume()`` verifies the newest checkpoint (checksums, fields against each
  other and against this run), skips a damaged one, and restores every part;
* the trainer's reports go to TensorBoard beside the rate, on the update axis,
  and on to another callback with global iteration numbers;
* one process at a time writes a run folder.

An adapter subclasses :class:`TrainingRun` and says only what is particular to
its trainer: how to run it (:meth:`run_trainer`), how its data position is
captured and replayed (:meth:`data_state`, :meth:`restore_data`), how to
validate (:meth:`evaluate`) and how its reports map to tags (``report_tags``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import mlx.core as mx

from .. import schedules
from ..callback import LRScheduleCallback
from ..callback.gradients import NonFiniteGradientError
from ..stopping import DEFAULT_SIGNALS, StopSignals
from .best import BestAdapter, checked_patience, checked_threshold
from .describe import Describes
from .reports import Reports
from .resume import Resume
from .saving import Saving
from .stops import Stopping, _Stop


class TrainingRun(Resume, Stopping, Saving, Reports, BestAdapter, Describes):
    """One training run of a trainer that pulls one batch per iteration, under a schedule.

    ``args`` carries mlx-lm's ``TrainingArgs`` fields: ``iters`` (the whole run),
    ``batch_size``, ``grad_accumulation_steps``, ``steps_per_report``,
    ``steps_per_save``, ``steps_per_eval``, ``val_batches`` and ``adapter_file``.
    The schedule counts optimizer updates; TensorBoard's x-axis is the update
    (``ceil(iteration / k)`` for a report of an iteration).
    """

    #: trainer.json's format name; the data fields an adapter adds, with their types.
    format = "mlx_sched_callbacks.TrainingRun"
    data_fields: dict = {}
    #: report field -> TensorBoard tag, for the trainer's loss reports.
    report_tags: dict = {}
    #: whether the trainer applies a last, incomplete accumulation group (mlx-lm does not)
    applies_leftover_group = False

    def __init__(
        self,
        model,
        optimizer,
        schedule: schedules.Schedule,
        args,
        train_dataset,
        val_dataset=None,
        *,
        log_dir: str | os.PathLike | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        keep_checkpoints: int = 3,
        training_callback=None,
        log_every: int = 1,
        flush_secs: float = 10.0,
        hyperparameters: dict | None = None,
        names: list[str] | None = None,
        stop_signals=DEFAULT_SIGNALS,
        resume_command: str | None = None,
        write_checkpoints: bool = True,
        early_stopping_patience: int | None = None,
        early_stopping_threshold: float = 0.0,
        run_config: dict | None = None,
        **gradients,
    ):
        k = args.grad_accumulation_steps
        if args.steps_per_save % k:
            raise ValueError(
                f"steps_per_save must be a multiple of grad_accumulation_steps={k} (a "
                "checkpoint inside an accumulation group would lose its gradients), "
                f"got {args.steps_per_save}."
            )
        if keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {keep_checkpoints}.")
        self.model = model
        self.optimizer = optimizer
        self.args = args
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.next_callback = training_callback
        self.keep_checkpoints = keep_checkpoints
        self.stop_signals = tuple(stop_signals)
        self.resume_command = resume_command
        self.write_checkpoints = write_checkpoints
        self.run_config = run_config
        self.early_stopping_patience = checked_patience(early_stopping_patience)
        self.early_stopping_threshold = checked_threshold(early_stopping_threshold)
        self.rank = mx.distributed.init().rank()
        self.adapter_dir = Path(args.adapter_file).parent
        self.checkpoint_dir = Path(checkpoint_dir or self.adapter_dir / "checkpoints")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.callback = LRScheduleCallback(
            schedule,
            optimizer,
            log_dir if self.rank == 0 else None,  # one writer for the whole run
            log_every=log_every,
            flush_secs=flush_secs,
            hyperparameters=hyperparameters,
            names=names,
            **gradients,
        )
        self.iteration = 0  # global iterations finished
        self._start_iteration = 0  # where the trainer call under way began
        self._segment_stop = 0  # where it ends
        self._stop = args.iters  # where the train() call ends
        self._stop_at = None  # where a polite stop ends the run, once one is agreed
        self._call_args = None  # the trainer's own args for the call under way
        self._pulled = 0  # global iterations whose batch was handed to the trainer
        self._tokens_before = 0  # trained tokens reported before the call under way
        self._last_trained_tokens = 0
        self._saved_at = None  # the iteration of the last checkpoint written
        self._signals: StopSignals | None = None
        self._failure: str | None = None
        self._resume_data: dict | None = None  # the data position to replay, once
        self._requested: tuple[str, int] | None = None  # a stop the run asked for itself
        self.stop_reason: str | None = None  # why the last train() ended early, if it did

    # -- what an adapter says ------------------------------------------------

    def run_trainer(self, iters: int) -> None:
        """Run the trainer for ``iters`` iterations with the hook in place.

        The trainer's own arguments for the call come from :meth:`call_args`.
        """
        raise NotImplementedError

    def call_args(self, args, iters: int, **changes):
        """The trainer's own ``args`` (a dataclass) for one call of ``iters`` iterations.

        Saves are numbered by the global iteration here; the trainer would restart at 1.
        The object is kept: a polite stop lowers its ``iters``, which these trainers
        read at every iteration, so that the trainer reports the iterations it ran.
        """
        self._call_args = dataclasses.replace(
            args, iters=iters, steps_per_save=iters + 1, **changes
        )
        return self._call_args

    def data_state(self) -> dict:
        """The data position, as JSON fields of trainer.json (``data_fields``)."""
        return {}

    def restore_data(self, state: dict) -> None:
        """Replay the data position saved in ``state`` before the next batch is drawn."""
        self._resume_data = state

    def check_data_state(self, state: dict, where: str) -> None:
        """Refuse a data position that cannot belong to this run's data."""

    def evaluate(self) -> float:
        """The validation loss on ``val_dataset``."""
        raise NotImplementedError

    # -- resume ------------------------------------------------------------

    # -- the run -----------------------------------------------------------

    def train(self, until: int | None = None) -> None:
        """Run the trainer from the current iteration to ``until`` (default: ``iters``).

        Stopping at ``until`` writes a checkpoint there; a later ``train()`` (in this
        process, or in another after :meth:`resume`) continues exactly. SIGINT or
        SIGTERM stop it at the end of the accumulation group under way, with a
        checkpoint, and raise :class:`~mlx_sched_callbacks.stopping.TrainingStopped`
        (a ``SystemExit`` with code 130 or 143).
        """
        stop = self.args.iters if until is None else min(until, self.args.iters)
        if stop % self.args.grad_accumulation_steps and stop != self.args.iters:
            raise ValueError(
                "until must be a multiple of grad_accumulation_steps="
                f"{self.args.grad_accumulation_steps}, got {until}."
            )
        if stop <= self.iteration:
            self.callback.close()
            return
        self._hold_folders()
        self._stop, self._stop_at, self._requested = stop, None, None
        self._set_aside_later_checkpoints()
        self.optimizer.init(self.model.trainable_parameters())
        if self.callback.gradient_watch is not None:
            self.callback.gradient_watch.reset()
        stopped = None
        with self.callback, StopSignals(self.stop_signals) as self._signals:
            self._describe()  # nothing is trained yet: a failure here is a plain error
            try:
                while self.iteration < stop:
                    self._start_iteration = self.iteration
                    self._segment_stop = self._segment_end(self.iteration, stop)
                    # Trainers count their tokens from 0 in every call.
                    self._tokens_before = self._last_trained_tokens
                    self.run_trainer(self._segment_stop - self.iteration)
                    self._guarded(self._finish_iteration)
                    if self.iteration == self._stop_at:
                        raise _Stop
                    # The next call picks up the data stream mid-epoch, as after a resume.
                    self.restore_data(self.trainer_state())
            except _Stop:
                stopped = self._stopped()
            finally:
                self._signals = None
        if stopped is not None:
            self._say(stopped.reason)
            self.stop_reason = stopped.reason
            if stopped.code:
                raise stopped

    def _segment_end(self, start: int, stop: int) -> int:
        """Where the trainer call that starts at ``start`` ends: an update boundary.

        A trainer reports every ``steps_per_report`` of its own iterations: a call
        that starts off that grid (after a resume or a polite stop) ends at the next
        point on it, so that later reports land where an uninterrupted run has them.
        Checkpoints off the grid end a call too, so that the trainer reports, and the
        checkpoint holds, every token trained before it.
        """
        k = self.args.grad_accumulation_steps
        report, save = self.args.steps_per_report, self.args.steps_per_save
        ends = [stop]
        if start % report:
            grid = math.lcm(report, k)
            ends.append((start // grid + 1) * grid)
        if save % report:
            ends.append((start // save + 1) * save)
        return min(ends)

    def begin_iteration(self) -> None:
        """Call before handing the next training batch to the trainer."""
        self._guarded(self._begin_iteration, step_ran=False)

    def _begin_iteration(self) -> None:
        self._finish_iteration()
        k = self.args.grad_accumulation_steps
        self._pulled += 1
        # Validation first: a plateau phase it feeds may lower this very update's rate.
        self._maybe_evaluate(self._pulled)
        if (self._pulled - 1) % k == 0:
            self.callback.on_step_begin()

    def end_iteration(self) -> None:
        """Call when the trainer is known to have finished the iteration it was handed."""
        self._guarded(self._finish_iteration)

    def _finish_iteration(self) -> None:
        """Count the iteration whose step just ran, once, and checkpoint when due."""
        if self.iteration == self._pulled:
            return
        self.iteration = self._pulled
        at_update = self.iteration % self.args.grad_accumulation_steps == 0 or (
            self.applies_leftover_group and self.iteration == self.args.iters
        )
        if at_update:
            try:
                self.callback.on_step_end()
            except NonFiniteGradientError as error:
                self.request_stop(f"{error} (iteration {self.iteration})", code=1)
        due = self.iteration % self.args.steps_per_save == 0 or self.iteration == self._stop
        if due or (self.iteration == self._stop_at and self._saved_at != self.iteration):
            self.save_checkpoint()

    def x(self, iteration: int) -> int:
        """The TensorBoard step of an iteration: the optimizer update it belongs to."""
        return math.ceil(iteration / self.args.grad_accumulation_steps)

    # -- reports -------------------------------------------------------------

    # -- checkpoints -------------------------------------------------------
